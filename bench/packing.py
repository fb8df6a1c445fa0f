"""The admission policy on a simulated GPU cluster (pure: no Ray), seeded.

    python -m bench.packing [--seed 7] [--jobs 400] [--nodes 4] [--gpus 8]

A synthetic workload of 0.25/0.5/1/2/4-GPU nodes with varied durations, priorities and teams is
played through `fabric.schedule.admission` in a discrete-event simulation. Two policies on the
same workload, in the same run:
- fabric: priorities with aging, EASY backfill, best-fit GPU packing;
- FIFO first-fit, no reservation, no priorities: what work gets when it is handed to a scheduler
  in arrival order with no admission of its own (the anchor).
Reports makespan against the lower bound (total GPU-seconds / GPUs), GPU utilisation while work is
queued, p95 queue wait per priority and the longest wait; then times the policy alone with 10,000
queued nodes on a simulated 1,000-node cluster.

The same workload on a real Ray, straight to Ray against through the fabric: `python -m bench.packing_ray`.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import time

from fabric.actors.heap import collect_rarely
from fabric.schedule.admission import (
    PRIORITIES,
    AdmissionPolicy,
    Booked,
    Cluster,
    Gpu,
    Node,
    Placement,
    Request,
    Running,
    order,
)

SIZES = (0.25, 0.5, 1.0, 2.0, 4.0)


def workload(seed: int, jobs: int, span_s: float) -> list[tuple[Request, float]]:
    """(request, true duration); the declared estimate is the duration rounded up, as users declare."""
    rng = random.Random(seed)
    out = []
    for i in range(jobs):
        size = rng.choices(SIZES, weights=(4, 3, 3, 2, 1))[0]
        duration = rng.uniform(20, 300) * (1 + size / 4)
        priority = rng.choices(PRIORITIES, weights=(4, 4, 1, 0.3))[0]
        request = Request(f"j{i:04d}", rng.choice(("research", "trading", "ml")), priority,
                          ready_at=rng.uniform(0, span_s), cpu=1.0, gpu=size, estimate_s=duration * 1.2)
        out.append((request, duration))
    return out


class FifoFirstFit(AdmissionPolicy):
    """The anchor: arrival order, first fit, head-of-line blocking, no reservation."""

    def decide(self, now, queue, cluster, running, quota=None):  # type: ignore[no-untyped-def, override]
        from fabric.schedule.admission import Decision, Waiting

        admitted, waiting = [], {}
        for request in sorted(queue, key=lambda r: (r.ready_at, r.key)):
            placement = None if waiting else _first_fit(cluster, request)  # strict FIFO: one blocked, all wait
            if placement is None:
                waiting[request.key] = Waiting(len(waiting) + 1, "fifo")
                continue
            cluster.take(request, placement)
            admitted.append((request, placement))
        return Decision(tuple(admitted), waiting, None)


def _first_fit(cluster: Cluster, request: Request) -> Placement | None:
    for node in cluster.nodes.values():
        if node.cpu_free < request.cpu:
            continue
        if request.gpu < 1:
            for gpu in node.gpus:
                if gpu.free + 1e-9 >= request.gpu:
                    return Placement(node.node_id, ((gpu.index, request.gpu, 0.0),))
            continue
        whole = [g for g in node.gpus if g.free >= 1 - 1e-9]
        if len(whole) >= request.gpu:
            return Placement(node.node_id, tuple((g.index, 1.0, 0.0) for g in whole[:int(request.gpu)]))
    return None


def simulate(policy: AdmissionPolicy, jobs: list[tuple[Request, float]], nodes: int, gpus: int) -> dict:
    cluster = Cluster([Node(f"n{i}", 64.0, [Gpu(g, 1.0, 80.0) for g in range(gpus)]) for i in range(nodes)])
    duration = {r.key: d for r, d in jobs}
    arrivals = sorted(jobs, key=lambda item: item[0].ready_at)
    events: list[tuple[float, int, str]] = []  # (time, order, key) of job ends
    queue: dict[str, Request] = {}
    running: dict[str, Running] = {}
    waits: dict[str, list[float]] = {p: [] for p in PRIORITIES}
    now, next_arrival, counter = 0.0, 0, 0
    busy_while_queued = queued_time = 0.0
    total_gpus = nodes * gpus
    while next_arrival < len(arrivals) or queue or running:
        upcoming = [arrivals[next_arrival][0].ready_at] if next_arrival < len(arrivals) else []
        upcoming += [events[0][0]] if events else []
        later = min(upcoming)
        if queue:  # utilisation while work is waiting, integrated over time
            in_use = sum(r.gpu for r in running.values())
            busy_while_queued += (later - now) * in_use / total_gpus
            queued_time += later - now
        now = later
        while events and events[0][0] <= now:
            _, _, key = heapq.heappop(events)
            item = running.pop(key)
            cluster.give(item.cpu, item.placement)
        while next_arrival < len(arrivals) and arrivals[next_arrival][0].ready_at <= now:
            request = arrivals[next_arrival][0]
            queue[request.key] = request
            next_arrival += 1
        decision = policy.decide(now, list(queue.values()), cluster, list(running.values()))
        for request, placement in decision.admit:
            del queue[request.key]
            waits[request.priority].append(now - request.ready_at)
            ends = now + duration[request.key]
            running[request.key] = Running(request.key, request.team, request.priority, placement, request.cpu,
                                           request.gpu, now, now + request.estimate_s)
            counter += 1
            heapq.heappush(events, (ends, counter, request.key))
    gpu_seconds = sum(r.gpu * d for r, d in jobs)
    return {"makespan": now, "lower_bound": gpu_seconds / total_gpus,
            "utilisation": busy_while_queued / queued_time if queued_time else 1.0,
            "p95": {p: _p95(w) for p, w in waits.items() if w},
            "longest": max(max(w) for w in waits.values() if w)}


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def time_policy(queued: int, nodes: int, seed: int) -> tuple[float, int]:
    rng = random.Random(seed)
    cluster = Cluster([Node(f"n{i}", 64.0, [Gpu(g, rng.choice((0.0, 0.25, 1.0)), 80.0) for g in range(8)])
                       for i in range(nodes)])
    queue = [Request(f"q{i}", "t", rng.choice(PRIORITIES), rng.uniform(0, 1000), 1.0, rng.choice(SIZES),
                     estimate_s=600) for i in range(queued)]
    started = time.perf_counter()
    decision = AdmissionPolicy().decide(1000.0, queue, cluster, [])
    return time.perf_counter() - started, len(decision.admit)


def time_decisions(queued: int, nodes: int, seed: int, events: int = 300
                   ) -> tuple[float, list[float], list[float], int]:
    """One admission decision per event, as the engine makes it: 10,000 queued nodes in queue order, a
    1,000-node cluster packed by a first full round, then `events` times one running node ends and the
    queue is decided again, stopping where no node has room for the least any queued node asks.
    The engine builds its capacity indexes once per request shape, and again only when Ray's nodes change:
    that build is timed alone (the seconds it took are returned first), before the events.
    Returns it, the seconds per decision, wall and CPU (this thread's: what other processes on a shared machine
    take is not counted), and how many were admitted over the events."""
    rng = random.Random(seed)
    cluster = Cluster([Node(f"n{i}", 64.0, [Gpu(g, 1.0, 80.0) for g in range(8)]) for i in range(nodes)])
    queue = order([Request(f"q{i}", "t", rng.choice(PRIORITIES), rng.uniform(0, 1000), 1.0, rng.choice(SIZES),
                           estimate_s=600) for i in range(queued + nodes * 16)], 1000.0, 1800.0)
    policy = AdmissionPolicy()
    booked = Booked(cluster)  # the cluster and its running work, kept in step as the engine keeps them
    first = policy.decide(1000.0, queue, booked, ordered=True)
    for r, p in first.admit:
        booked.add(Running(r.key, r.team, r.priority, p, r.cpu, r.gpu, 1000.0, 1600.0))
    gone = {r.key for r, _ in first.admit}
    queue = [r for r in queue if r.key not in gone][:queued]  # 10,000 still queued behind a full cluster
    least = (min(r.cpu for r in queue), min(r.gpu for r in queue))
    started = time.perf_counter()
    shapes = {r.shape: r for r in queue}.values()
    booked.cluster.full(*least)  # what the first decisions that meet each shape build: the room left now,
    for request in shapes:  # and each shape's best fit on the cluster with nothing running, in score order
        booked.empty().copy().fit(request)
    built = time.perf_counter() - started
    took: list[float] = []
    cpu: list[float] = []
    admitted = 0
    for _ in range(events):
        booked.end(rng.choice(list(booked)).key)  # one running node ends (not timed)
        started, started_cpu = time.perf_counter(), time.thread_time()
        decision = policy.decide(1000.0, queue, booked, ordered=True, stop_below=least)
        took.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
        gone = {r.key for r, _ in decision.admit}
        queue = [r for r in queue if r.key not in gone]  # the engine's waitlist removes them (not timed)
        for r, p in decision.admit:
            booked.add(Running(r.key, r.team, r.priority, p, r.cpu, r.gpu, 1000.0, 1600.0))
        admitted += len(decision.admit)
    return built, took, cpu, admitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--span", type=float, default=600.0, help="arrivals spread over this many seconds")
    args = parser.parse_args()
    jobs = workload(args.seed, args.jobs, args.span)
    print(f"{args.jobs} jobs (seed {args.seed}) on {args.nodes} nodes x {args.gpus} GPUs, simulated")
    for name, policy in (("fabric", AdmissionPolicy(aging_s=1800)), ("fifo first-fit (anchor)", FifoFirstFit())):
        r = simulate(policy, jobs, args.nodes, args.gpus)
        waits = "  ".join(f"{p} {v:6.0f}s" for p, v in r["p95"].items())
        print(f"{name:24s} makespan {r['makespan'] / r['lower_bound']:.3f} x lower bound   "
              f"utilisation while queued {r['utilisation'] * 100:5.1f} %   longest wait {r['longest']:6.0f}s")
        print(f"{'':24s} p95 wait: {waits}")
    took, admitted = time_policy(10_000, 1_000, args.seed)
    print(f"policy alone: one full round over 10,000 queued nodes on 1,000 nodes took {took * 1000:.0f} ms "
          f"({took / 10_000 * 1000:.3f} ms per queued node; {admitted} admitted)")
    collect_rarely()  # as the registry's process does, where the engine makes these decisions
    built, took, cpu, admitted = time_decisions(10_000, 1_000, args.seed)
    print(f"one admission decision per event (a node ends), 10,000 queued on 1,000 nodes, {len(took)} events "
          f"({admitted} admitted in all), per decision:")
    print(f"  before them, once per request shape: the capacity indexes, built in {built * 1000:.1f} ms")
    for name, values in (("wall", took), ("CPU", cpu)):
        p99 = statistics.quantiles(values, n=100)[-1]
        print(f"  {name:4s} median {statistics.median(values) * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms, "
              f"worst {max(values) * 1000:.3f} ms")


if __name__ == "__main__":
    main()
