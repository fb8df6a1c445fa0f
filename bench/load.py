"""Load: N submissions of 10 no-op nodes from C concurrent SDK clients on a local Ray, with the invariants.

    python -m bench.load                                   # 500 x 10 from 8 clients (a few minutes on 2 cores)
    python -m bench.load --submissions 10000 --clients 64  # the long run (not in CI)

Prints submit latency percentiles, end-to-end latency, submissions/s and peak memory, and the ratio of the
fabric's per-node cost to raw Ray's per-task cost measured in the same run (the anchor). Appends the
figures to the reliability results (scripts/reliability_report.py puts them in docs/reliability.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args(argv)
    os.chdir(REPO)
    import ray

    import fabric as fb
    from tests.reliability.checks import check_all, wait_all
    from tests.reliability.load import marked_dag, run_clients
    from tests.reliability.results import percentiles, record

    work = Path(tempfile.mkdtemp(prefix="fabric-load-"))
    client = fb.connect("local", num_cpus=args.num_cpus, home=str(work / "home"))
    try:
        noop = ray.remote(num_cpus=1)(lambda: None)
        ray.get([noop.remote() for _ in range(200)])  # warm the workers
        began = time.perf_counter()
        ray.get([noop.remote() for _ in range(2000)])
        anchor = (time.perf_counter() - began) / 2000
        markers = str(work / "markers")
        clients = [client for _ in range(args.clients)]  # one registry handle, C threads, as C notebooks would
        began = time.time()
        result = run_clients(clients, args.submissions, lambda n: marked_dag(f"bench-{n}", args.nodes, markers,
                                                                             cpu="1"), lambda n: {})
        finals = wait_all(client, result.acknowledged, timeout=3600)
        wall = time.time() - began
        end_to_end = [finals[s].ended_at - result.started_at[s] for s in result.acknowledged]
        invariants = check_all(f"bench: {args.submissions} x {args.nodes} from {args.clients}",
                               work / "home" / "fabric.db", result.acknowledged, Path(markers), 2)
        per_node = wall / (args.submissions * args.nodes)
        figures = {**result.figures(), "end_to_end_s": {k: round(v, 2) for k, v in percentiles(end_to_end).items()},
                   "wall_s": round(wall, 1), "nodes_per_s": round(args.submissions * args.nodes / wall, 1),
                   "per_node_ms": round(per_node * 1000, 2), "raw_ray_task_ms": round(anchor * 1000, 3),
                   "ratio_to_raw_ray": round(per_node / anchor, 1), "lost": invariants["lost"],
                   "peak_driver_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
        record("load", f"bench: {args.submissions} submissions x {args.nodes} nodes, {args.clients} clients (SDK)",
               **figures)
        for key, value in figures.items():
            print(f"{key:>22}: {value}")
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
