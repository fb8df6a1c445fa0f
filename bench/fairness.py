"""Fairness: team B's status latency while team A floods the gateway with submits (bounded in time).

    python -m bench.fairness [--seconds 20] [--rounds 4] [--flooders 8] [--flood raw|sdk]

One local Ray (2 CPUs) and the gateway as `fabric up` starts it, with its default per-team limits
(FABRIC_GATEWAY_RATE, FABRIC_GATEWAY_WRITE_RATE, FABRIC_GATEWAY_BURST_S, FABRIC_GATEWAY_TEAM_WRITES: set them
in the environment to try others). Team B polls the status of one of its submissions from one client, alone
(the baseline) and while team A's `--flooders` clients, in another process so that they do not share this
one's interpreter, submit one-node DAGs as fast as the gateway answers: `raw` clients ignore Retry-After
and ask again at once (a hostile loop), `sdk` ones are `fb.connect(url, token)`, which waits it out (a
script's submit loop). The two phases alternate in `--rounds` windows each (alone, flood, alone, ...), so
that the load of whatever else shares the machine moves both alike. Prints B's status p50/p95 in both
phases, the ratio of the p95s (target <= 2x), per-round ratios, and what A's flood got: accepted submits and
429s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SPEC = {"version": 1, "pipeline_id": "flood", "nodes": [
    {"id": "a", "kind": "python_task", "entrypoint": "bench.nodes:noop", "resources": {"cpu": 0.1}}]}
SETTLE_S = 1.0  # after the flood starts (it is under way) and after it stops (its accepted work is done)


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")


def poll(base: str, headers: dict[str, str], submission_id: str, seconds: float, every_s: float = 0.02
         ) -> list[float]:
    """Sequential status reads, as a dashboard or `fabric status --watch` would make them."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = http.get(f"/api/orch/status/{submission_id}")
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            time.sleep(every_s)
    return latencies


def flood(base: str, token: str, clients: int, go: Any, done: Any, counts: dict[str, int], mode: str) -> None:
    """A's submit loop: `clients` threads, each submitting as soon as its last submit was answered, while `go`
    is set, until `done` is."""
    import threading

    lock = threading.Lock()

    def count(status: str) -> None:
        with lock:
            counts[status] = counts.get(status, 0) + 1

    def sdk(index: int) -> None:
        import fabric as fb
        from fabric.errors import FabricError

        client = fb.connect(base, token=token)
        n = 0
        while not done.is_set():
            if not go.wait(0.1):
                continue
            n += 1
            try:
                client.submit(SPEC, {"submission_id": f"flood-{index}-{n}"})
                count("202")
            except FabricError as error:
                count(str(error.code))

    def raw(index: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            n = 0
            while not done.is_set():
                if not go.wait(0.1):
                    continue
                n += 1
                body = {"dag_spec": SPEC, "runtime_params": {"submission_id": f"flood-{index}-{n}"}}
                count(str(http.post("/api/orch/submit", json=body).status_code))

    threads = [threading.Thread(target=sdk if mode == "sdk" else raw, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="each phase's length, over all its windows")
    parser.add_argument("--rounds", type=int, default=4, help="alone/flood windows of each phase, alternating")
    parser.add_argument("--flooders", type=int, default=8, help="team A's concurrent submit loops")
    parser.add_argument("--flood", choices=("raw", "sdk"), default="sdk",
                        help="raw: ignore Retry-After (hostile); sdk: the HTTP client, which waits it out")
    args = parser.parse_args()

    import ray
    from ray import serve

    import fabric as fb
    from fabric.cli.gateway import start_gateway
    from fabric.settings import ENV, settings
    from serve.auth import mint_token

    home = tempfile.mkdtemp(prefix="fabric-fair-bench-")
    os.environ[ENV["home"]] = home
    fb.connect("local", num_cpus=2, home=home)
    tokens = Path(home) / "tokens.yaml"
    team_a, team_b = mint_token(tokens, "team-a"), mint_token(tokens, "team-b")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = start_gateway(tokens, port)
    b_headers = {"Authorization": f"Bearer {team_b}"}
    with httpx.Client(base_url=base, headers=b_headers, timeout=60) as http:
        submitted = http.post("/api/orch/submit", json={"dag_spec": SPEC, "runtime_params": {}})
        submitted.raise_for_status()
    watched = submitted.json()["submission_id"]
    poll(base, b_headers, watched, 3.0)  # warm: connections, the worker, the registry's caches

    spawn = multiprocessing.get_context("spawn")
    manager = spawn.Manager()
    counts, go, done = manager.dict(), manager.Event(), manager.Event()
    flooder = spawn.Process(target=flood, args=(base, team_a, args.flooders, go, done, counts, args.flood))
    flooder.start()
    window = args.seconds / args.rounds
    baseline: list[float] = []
    flooded: list[float] = []
    rounds: list[tuple[float, float]] = []
    for _ in range(args.rounds):
        alone = poll(base, b_headers, watched, window)
        go.set()
        time.sleep(SETTLE_S)  # the flood under way before B measures
        under = poll(base, b_headers, watched, window)
        go.clear()
        time.sleep(SETTLE_S + 1.0)  # the flood's last accepted runs end before the next baseline window
        baseline += alone
        flooded += under
        rounds.append((pct(alone, 95), pct(under, 95)))
    done.set()
    flooder.join()

    config = settings()
    print(f"gateway limits per team: {config.gateway_rate:g} requests/s, {config.gateway_write_rate:g} writes/s, "
          f"bursts of {config.gateway_burst_s:g} s, {config.gateway_team_writes} writes in flight (0 = off)")
    print(f"team B status alone:       p50 {pct(baseline, 50):6.1f} ms   p95 {pct(baseline, 95):6.1f} ms   "
          f"max {max(baseline) * 1000:6.1f} ms   ({len(baseline)} reads)")
    print(f"team B status under flood: p50 {pct(flooded, 50):6.1f} ms   p95 {pct(flooded, 95):6.1f} ms   "
          f"max {max(flooded) * 1000:6.1f} ms   ({len(flooded)} reads)")
    print("per round p95 alone/flood: " + ", ".join(f"{a:.0f}/{f:.0f} ms" for a, f in rounds))
    ratio = pct(flooded, 95) / pct(baseline, 95)
    print(f"p95 ratio {ratio:.2f}x (target <= 2x)")
    total = sum(counts.values())
    flood_s = args.rounds * (window + SETTLE_S)
    print(f"team A's {args.flood} flood ({args.flooders} clients, {flood_s:g} s): {total} submits, "
          f"{counts.get('202', 0)} accepted, {counts.get('429', 0) + counts.get('RATE_LIMITED', 0)} answered 429, "
          f"others {({k: v for k, v in counts.items() if k not in ('202', '429', 'RATE_LIMITED')})}")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
