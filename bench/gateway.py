"""The gateway under concurrent HTTP clients on loopback (bounded in count and time).

    python -m bench.gateway [--clients 16] [--submissions 400] [--seconds 120]

Reports submit and status latency percentiles, accepted submissions per second and the registry's
memory per finished submission kept in memory. The anchor is `GET /healthz`, a route that is Ray Serve
plus one registry call and nothing of fabric's, so the ratios say what fabric adds to what Serve itself
costs on this machine. It is measured twice with the same 16 clients: inside the measured wave (each
client reads it after each status, so it meets the same load, submitted runs included: the ratios use
this one), and alone before the wave (printed for comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import ray

import fabric as fb
from fabric.settings import ENV

SPEC = {"version": 1, "pipeline_id": "tiny", "nodes": [
    {"id": "a", "kind": "python_task", "entrypoint": "bench.nodes:noop", "outs": ["a"], "resources": {"cpu": 1}},
    {"id": "b", "kind": "python_task", "entrypoint": "bench.nodes:noop", "ins": ["a"], "resources": {"cpu": 1}}],
    "edges": [{"from": "a", "to": "b"}]}


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")


def registry_rss(client: fb.Client) -> int:
    pid = ray.get(client._registry.pid.remote())
    return psutil.Process(pid).memory_info().rss


async def wave(base: str, headers: dict[str, str], clients: int, per_client: int, deadline: float
               ) -> tuple[list[float], list[float], list[float], list[str], float]:
    """Each client submits, reads the status of what it submitted, then reads /healthz, per_client times."""
    submit_s: list[float] = []
    status_s: list[float] = []
    anchor_s: list[float] = []
    ids: list[str] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30, limits=limits) as http:
        async def one_client() -> None:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                response = await http.post("/api/orch/submit", json={"dag_spec": SPEC})
                took = time.perf_counter() - start
                if response.status_code != 202:
                    continue
                submit_s.append(took)
                ids.append(response.json()["submission_id"])
                start = time.perf_counter()
                await http.get(f"/api/orch/status/{ids[-1]}")
                status_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                await http.get("/healthz")
                anchor_s.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return submit_s, status_s, anchor_s, ids, time.perf_counter() - started


async def anchor(base: str, headers: dict[str, str], clients: int, requests: int) -> tuple[list[float], float]:
    took: list[float] = []
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        async def one_client() -> None:
            for _ in range(requests // clients):
                start = time.perf_counter()
                await http.get("/healthz")
                took.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return took, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--submissions", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()

    from ray import serve

    from fabric.cli.gateway import start_gateway
    from serve.auth import mint_token

    home = tempfile.mkdtemp(prefix="fabric-gw-bench-")
    os.environ[ENV["home"]] = home
    # One team's raw throughput: its per-team rate limits (bench/fairness.py measures those) are off.
    os.environ.setdefault(ENV["gateway_rate"], "0")
    os.environ.setdefault(ENV["gateway_write_rate"], "0")
    os.environ.setdefault(ENV["gateway_team_writes"], "0")
    client = fb.connect("local", num_cpus=2, home=home)
    token = mint_token(Path(home) / "tokens.yaml", "bench")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = start_gateway(Path(home) / "tokens.yaml", port)
    headers = {"Authorization": f"Bearer {token}"}
    per_client = max(args.submissions // args.clients, 1)
    deadline = time.monotonic() + args.seconds

    # Warm-up wave: worker processes, connections, the registry's heap at its working size.
    asyncio.run(wave(base, headers, args.clients, max(per_client // 4, 1), deadline))
    time.sleep(2)
    alone_s, alone_window = asyncio.run(anchor(base, headers, args.clients, args.submissions))
    rss_before = registry_rss(client)
    submit_s, status_s, anchor_s, ids, window = asyncio.run(wave(base, headers, args.clients, per_client, deadline))
    for submission_id in ids:  # let them all finish, then measure what finished ones keep
        client.get(submission_id, check=False).wait(max(deadline - time.monotonic(), 1.0))
    rss_after = registry_rss(client)
    kept = ray.get(client._registry.kept.remote(client._cap))

    a50, a99 = pct(anchor_s, 50), pct(anchor_s, 99)
    print(f"{len(ids)} submissions from {args.clients} concurrent clients over HTTP on loopback (2-node DAGs)")
    print(f"anchor alone, before the wave: GET /healthz (Serve + one registry call): p50 {pct(alone_s, 50):6.1f} ms   "
          f"p99 {pct(alone_s, 99):6.1f} ms   {len(alone_s) / alone_window:6.1f} requests/s")
    print(f"anchor in the wave (the ratios' base): GET /healthz after each status read: p50 {a50:6.1f} ms   "
          f"p99 {a99:6.1f} ms")
    print(f"submit  p50 {pct(submit_s, 50):6.1f} ms   p99 {pct(submit_s, 99):6.1f} ms   "
          f"= {pct(submit_s, 99) / a99:4.2f} x anchor p99   (target <= 1.3 x)")
    print(f"status  p50 {pct(status_s, 50):6.1f} ms   p99 {pct(status_s, 99):6.1f} ms   "
          f"= {pct(status_s, 99) / a99:4.2f} x anchor p99   (target <= 1.1 x)")
    print(f"accepted {len(ids) / window:6.1f} submissions/s, each followed by a status and a /healthz read, while "
          f"all of them also ran; the anchor alone answered {len(alone_s) / alone_window:6.1f} requests/s")
    per_kept = kept["finished_bytes"] / max(kept["finished"], 1)
    print(f"registry memory: {per_kept:.0f} bytes per finished submission kept in memory ({kept['finished']} kept, "
          f"{kept['finished_with_results']} with their outputs' refs) (target <= 2 KB; older ones are paged "
          "from the store)")
    per = (rss_after - rss_before) / max(len(ids), 1)
    print(f"registry RSS growth over the measured wave: {per / 1024:.2f} KiB per submission (Ray's per-task "
          "bookkeeping, SQLite's page cache and allocator slack included)")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
