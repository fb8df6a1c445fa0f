"""A cached re-run of the ML example (jobs/dags/bt_xs_bilstm.yaml) against its first run, in one process.

The first run computes every node (the anchor); the second submits the identical DAG over the identical data:
every `cache: true` node shows CACHED and only `serve` (not cached: it (re)deploys) runs. A third run with
another seed shows that new data is never served from the cache. Prints wall times and their ratio.

    .venv/bin/python -m bench.cache            # on a fresh local Ray, FABRIC_HOME in a temp dir
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "jobs/dags/bt_xs_bilstm.yaml"


def timed_run(client, spec) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    status = client.submit(spec).wait(1200)
    took = time.perf_counter() - started
    if status.state != "SUCCEEDED":
        raise SystemExit(f"the example ended {status.state}: {[(n.node_id, n.state, n.error) for n in status.nodes]}")
    return took, {n.node_id: str(n.state) for n in status.nodes}


def main() -> None:
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    home = tempfile.mkdtemp(prefix="fabric-bench-cache-")
    import ray

    import fabric as fb
    from fabric.settings import ENV

    os.environ[ENV["home"]] = home  # for the local Ray and its workers

    client = fb.connect("local", num_cpus=int(os.environ.get("BENCH_CPUS", "2")), home=home)
    spec = yaml.safe_load(EXAMPLE.read_text())
    try:
        first, states = timed_run(client, spec)
        print(f"first run (computes everything): {first:7.1f} s  {sorted(set(states.values()))}")
        second, states = timed_run(client, spec)
        cached = sorted(n for n, s in states.items() if s == "CACHED")
        ran = sorted(n for n, s in states.items() if s != "CACHED")
        print(f"cached re-run:                   {second:7.1f} s  CACHED {cached}; ran {ran}")
        print(f"ratio cached / first:            {second / first:7.3f}  ({first / second:.1f}x faster)")
        other = yaml.safe_load(EXAMPLE.read_text())
        other["nodes"][0]["params"]["seed"] += 1
        third, states = timed_run(client, other)
        print(f"new data (another seed):         {third:7.1f} s  CACHED "
              f"{sorted(n for n, s in states.items() if s == 'CACHED') or 'none'}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
