"""The gateway under concurrent HTTP clients on loopback (bounded in count and time).

    python -m bench.gateway [--clients 16] [--submissions 400] [--seconds 120]

Reports submit and status latency percentiles, accepted submissions per second, and the registry's
memory per finished submission.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import ray

import fabric as fb

SPEC = {"version": 1, "pipeline_id": "tiny", "nodes": [
    {"id": "a", "kind": "python_task", "entrypoint": "bench.nodes:noop", "outs": ["a"], "resources": {"cpu": 1}},
    {"id": "b", "kind": "python_task", "entrypoint": "bench.nodes:noop", "ins": ["a"], "resources": {"cpu": 1}}],
    "edges": [{"from": "a", "to": "b"}]}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 1 else float("nan")


def registry_rss() -> int:
    pid = ray.get(fb.connect()._registry.pid.remote())
    return psutil.Process(pid).memory_info().rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--submissions", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()

    from ray import serve

    from serve.auth import mint_token
    from serve.gateway import build_app

    home = tempfile.mkdtemp(prefix="fabric-gw-bench-")
    os.environ["FABRIC_HOME"] = home
    client = fb.connect("local", num_cpus=2, home=home)
    token = mint_token(Path(home) / "tokens.yaml", "bench")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"tokens_file": str(Path(home) / "tokens.yaml")}), name="fabric-gateway", route_prefix="/")
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}"
    rss_before = registry_rss()

    submit_s: list[float] = []
    status_s: list[float] = []
    ids: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds
    per_client = args.submissions // args.clients

    def worker() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                response = http.post("/api/orch/submit", json={"dag_spec": SPEC})
                took = time.perf_counter() - start
                if response.status_code == 202:
                    with lock:
                        submit_s.append(took)
                        ids.append(response.json()["submission_id"])
                start = time.perf_counter()
                http.get(f"/api/orch/status/{ids[-1]}")
                with lock:
                    status_s.append(time.perf_counter() - start)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accept_window = time.perf_counter() - started
    for submission_id in ids:  # let them all finish, then measure what finished ones cost
        client.get(submission_id).wait(max(deadline - time.monotonic(), 1.0))
    rss_after = registry_rss()

    print(f"{len(ids)} submissions from {args.clients} concurrent clients over HTTP on loopback")
    print(f"submit  p50 {pct(submit_s, 50):6.1f} ms   p99 {pct(submit_s, 99):6.1f} ms   (target p99 <= 50 ms)")
    print(f"status  p50 {pct(status_s, 50):6.1f} ms   p99 {pct(status_s, 99):6.1f} ms   (target p99 <= 20 ms)")
    print(f"accepted {len(ids) / accept_window:6.1f} submissions/s while all of them also ran (target >= 200/s)")
    per = (rss_after - rss_before) / max(len(ids), 1)
    print(f"registry memory: {per / 1024:.1f} KiB per finished submission kept in memory "
          f"(target <= 2 KB; older than FABRIC_KEEP_FINISHED are paged from the store)")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
