"""The indexed admission policy decides as the straightforward one did (tests/admission_reference.py: a scan of
every node per fit, a full copy per reservation), on small random clusters and queues, seeded: once per
call with a plain cluster and running list, and over a run of events with one `Booked` kept in step."""

from __future__ import annotations

import random

import pytest

from fabric.schedule.admission import (
    PRIORITIES,
    AdmissionPolicy,
    Booked,
    Cluster,
    Decision,
    Gpu,
    Node,
    PoolLimit,
    Request,
    Running,
    order,
)
from fabric.states import Wait, WaitReason
from tests import admission_reference as reference

POOLS = (None, None, "train", "batch")


def nodes(rng: random.Random) -> list[Node]:
    out = []
    for i in range(rng.randint(1, 5)):
        gpus = [Gpu(g, rng.choice((1.0, 1.0, 0.5, 0.25, 0.0)), rng.choice((80.0, 40.0, 20.0)))
                for g in range(rng.choice((0, 1, 2, 4)))]
        out.append(Node(f"n{i}", float(rng.choice((2, 4, 8, 16))), gpus, rng.choice(POOLS), rng.random() < 0.2,
                        frozenset({"batch"}) if rng.random() < 0.2 else frozenset()))
    return out


def request(rng: random.Random, key: str, now: float) -> Request:
    gpu = rng.choice((0.0, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0))
    return Request(key, rng.choice(("a", "b")), rng.choice(PRIORITIES), now - rng.choice((0, 5, 50, 400, 4000)),
                   float(rng.choice((0.5, 1, 2, 4))), gpu, rng.choice((0.0, 0.0, 10.0, 30.0)) if gpu else 0.0,
                   rng.choice(POOLS), float(rng.choice((10, 60, 300, 900))), rng.random() < 0.3, rng.random() < 0.3,
                   float(rng.choice((1, 2))) if gpu and rng.random() < 0.3 else None, 300.0)


def budget(limit: float):  # type: ignore[no-untyped-def]
    """A quota check that books as it answers (as the engine's does): the same calls, the same answers."""
    used: dict[str, float] = {}

    def check(r: Request) -> Wait | None:
        if used.get(r.team, 0.0) + r.gpu > limit:
            return Wait(WaitReason.QUOTA, f"{r.team} over {limit}")
        used[r.team] = used.get(r.team, 0.0) + r.gpu
        return None
    return check


def same(new: Decision, old: Decision) -> None:
    assert [(r.key, r.cpu, r.gpu, p) for r, p in new.admit] == [(r.key, r.cpu, r.gpu, p) for r, p in old.admit]
    assert {k: (w.position, w.reason) for k, w in new.waiting.items()} == \
           {k: (w.position, w.reason) for k, w in old.waiting.items()}
    assert new.reservation == old.reservation


def state(cluster: Cluster | reference.Cluster) -> list[tuple[object, ...]]:
    return [(n.node_id, n.cpu_free, [(g.free, g.free_mem_gb) for g in n.gpus]) for n in cluster.nodes.values()]


def start(rng: random.Random, cluster: Cluster, now: float, count: int) -> list[Running]:
    running = []
    for i in range(count):
        r = request(rng, f"r{i}", now)
        placement = cluster.fit(r)
        if placement is not None:
            cluster.take(r, placement)
            running.append(Running(r.key, r.team, r.priority, placement, r.cpu, r.gpu, now - 10,
                                   now + rng.choice((5, 20, 20, 100, 600)), r.pool, r.preemptible))
    return running


def copies(built: list[Node]) -> tuple[list[Node], list[Node]]:
    return [n.clone() for n in built], [n.clone() for n in built]


@pytest.mark.parametrize("seed", range(300))
def test_one_decision_matches_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    now = 1000.0
    mine, theirs = copies(nodes(rng))
    cluster = Cluster(mine)
    running = start(rng, cluster, now, rng.randint(0, 12))
    old_cluster = reference.Cluster([n.clone() for n in cluster.nodes.values()])
    queue = order([request(rng, f"q{i}", now) for i in range(rng.randint(1, 16))], now, 1800)
    pools = {"train": PoolLimit(rng.randint(1, 3))} if rng.random() < 0.5 else {}
    limit = rng.choice((1.0, 4.0, 100.0))
    stop = (min(r.cpu for r in queue), min(r.gpu for r in queue)) if rng.random() < 0.3 else None
    new = AdmissionPolicy(pools).decide(now, queue, cluster, running, budget(limit), ordered=True, stop_below=stop)
    old = reference.AdmissionPolicy(pools).decide(now, queue, old_cluster, running, budget(limit), ordered=True,
                                                  stop_below=stop)
    same(new, old)
    assert state(cluster) == state(old_cluster)


@pytest.mark.parametrize("seed", range(60))
def test_decisions_over_events_match_with_one_booked_kept_in_step(seed: int) -> None:
    rng = random.Random(10_000 + seed)
    now = 1000.0
    built = nodes(rng)
    cluster = Cluster([n.clone() for n in built])
    running = start(rng, cluster, now, rng.randint(0, 10))
    booked = Booked(cluster, running)
    old_cluster = reference.Cluster([n.clone() for n in cluster.nodes.values()])
    old_running = list(running)
    policy, old_policy = AdmissionPolicy(), reference.AdmissionPolicy()
    queue: list[Request] = []
    for step in range(12):
        now += rng.choice((0.0, 1.0, 30.0))
        queue += [request(rng, f"s{step}q{i}", now) for i in range(rng.randint(0, 4))]
        if old_running and rng.random() < 0.6:  # one running node ends
            ended = old_running.pop(rng.randrange(len(old_running)))
            old_cluster.give(ended.cpu, ended.placement)
            booked.end(ended.key)
        queue = order(queue, now, 1800)
        new = policy.decide(now, queue, booked, (), ordered=True)
        old = old_policy.decide(now, queue, old_cluster, old_running, ordered=True)
        same(new, old)
        assert state(booked.cluster) == state(old_cluster)
        for r, p in new.admit:
            item = Running(r.key, r.team, r.priority, p, r.cpu, r.gpu, now, now + r.estimate_s, r.pool)
            booked.add(item)
            old_running.append(item)
        gone = {r.key for r, _ in new.admit}
        queue = [r for r in queue if r.key not in gone]
