"""The packing workload on a real Ray: 4 nodes x 8 fake GPUs (`ray.cluster_utils.Cluster`), durations
scaled down, sent in the same run (a) straight to Ray as tasks at their arrival times, the anchor,
and (b) through the fabric with admission on, each job a one-node DAG with its priority.

    python -m bench.packing_ray [--seed 7] [--jobs 60] [--scale 0.05]

Both are measured the same way: from when each job arrived to when its body started in a worker.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

import fabric as fb
from bench.nodes import sleep_for
from bench.packing import _p95, workload
from fabric.schedule.admission import PRIORITIES


def report(name: str, jobs, runs: dict[str, tuple[float, float]], arrived: dict[str, float], gpus: int) -> None:
    size = {r.key: r.gpu for r, _ in jobs}
    priority = {r.key: r.priority for r, _ in jobs}
    start = min(arrived.values())
    makespan = max(end for _, end in runs.values()) - start
    lower_bound = sum(size[k] * (e - s) for k, (s, e) in runs.items()) / gpus
    waits = {p: [runs[k][0] - arrived[k] for k in runs if priority[k] == p] for p in PRIORITIES}
    # GPU utilisation while some job had arrived and not started, by a sweep over every change
    points = sorted({*arrived.values(), *(t for pair in runs.values() for t in pair)})
    busy = queued = 0.0
    for a, b in zip(points, points[1:], strict=False):
        if any(arrived[k] <= a < runs[k][0] for k in runs):
            queued += b - a
            busy += (b - a) * sum(size[k] for k, (s, e) in runs.items() if s <= a < e) / gpus
    p95 = "  ".join(f"{p} {_p95(w):5.2f}s" for p, w in waits.items() if w)
    longest = max(max(w) for w in waits.values() if w)
    print(f"{name:22s} makespan {makespan / lower_bound:.3f} x lower bound   utilisation while queued "
          f"{busy / queued * 100 if queued else 100:5.1f} %   longest wait {longest:5.2f}s")
    print(f"{'':22s} p95 wait: {p95}")


def run_raw(jobs, scale: float) -> tuple[dict, dict]:
    task = ray.remote(sleep_for)
    t0, refs, arrived = time.time() + 1.0, {}, {}
    for request, duration in sorted(jobs, key=lambda j: j[0].ready_at):
        arrival = t0 + request.ready_at * scale
        time.sleep(max(arrival - time.time(), 0.0))
        arrived[request.key] = time.time()
        refs[request.key] = task.options(num_cpus=0.01, num_gpus=request.gpu).remote(duration * scale)
    return dict(zip(refs, ray.get(list(refs.values())), strict=True)), arrived


def run_fabric(client, jobs, scale: float) -> tuple[dict, dict]:
    t0, runs, arrived = time.time() + 1.0, {}, {}
    for request, duration in sorted(jobs, key=lambda j: j[0].ready_at):
        arrival = t0 + request.ready_at * scale
        time.sleep(max(arrival - time.time(), 0.0))
        arrived[request.key] = time.time()
        node = {"id": "job", "kind": "python_task", "entrypoint": "bench.nodes:sleep_for",
                "params": {"seconds": duration * scale}, "resources": {"cpu": "10m", "gpu": request.gpu},
                # The declared estimate (backfill reads it), with a few seconds for a worker to start.
                "slo": {"max_runtime": f"{math.ceil(request.estimate_s * scale) + 10}s"}}
        spec = {"version": 1, "pipeline_id": request.key, "slo": {"priority": request.priority}, "nodes": [node]}
        runs[request.key] = client.submit(spec)
    finals = {key: run.wait(600) for key, run in runs.items()}
    failed = {key: final.node("job") for key, final in finals.items() if final.state != "SUCCEEDED"}
    for key, node in failed.items():
        print(f"  {key}: {node.state} after {node.attempts} attempt(s): {node.error.message if node.error else ''}")
    return {key: tuple(runs[key].result("job")) for key in finals if key not in failed}, arrived


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--scale", type=float, default=0.05, help="durations and arrival times are multiplied by it")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    jobs = workload(args.seed, args.jobs, 600.0)
    home = Path(tempfile.mkdtemp(prefix="fabric-bench-"))
    (home / "scheduling.yaml").write_text(f"aging_s: {1800 * args.scale}\n")
    os.chdir(Path(__file__).resolve().parents[1])  # workers import bench.nodes
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(args.nodes):
        # As a real GPU node has (4 CPUs a GPU): Ray keeps as many idle workers warm as a node has CPUs.
        cluster.add_node(num_cpus=4 * args.gpus, num_gpus=args.gpus)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        gpus = args.nodes * args.gpus
        print(f"{args.jobs} jobs (seed {args.seed}) on a real Ray of {args.nodes} nodes x {args.gpus} fake GPUs, "
              f"durations x {args.scale}")
        warm = ray.remote(sleep_for)  # start workers on every node before either run is timed
        ray.get([warm.options(num_cpus=0.01, num_gpus=0.25).remote(0.5) for _ in range(gpus)])
        report("raw Ray (anchor)", jobs, *run_raw(jobs, args.scale), gpus)
        client = fb.connect(home=str(home))
        warm_up = {"version": 1, "pipeline_id": "warm-up", "nodes": [
            {"id": f"w{i}", "kind": "python_task", "entrypoint": "bench.nodes:sleep_for", "params": {"seconds": 0.5},
             "resources": {"cpu": "10m", "gpu": 0.25}} for i in range(gpus)]}
        client.submit(warm_up).wait(300)  # the fabric's workers belong to its own Ray job: start them too
        report("fabric admission", jobs, *run_fabric(client, jobs, args.scale), gpus)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
