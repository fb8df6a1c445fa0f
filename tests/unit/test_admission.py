"""The admission policy and team budgets, pure: priorities, aging, backfill that never delays the
reserved head, GPU packing without fragmentation stalls, pool limits, quotas, preemption victims."""

from __future__ import annotations

import datetime as dt

from fabric.schedule.admission import (
    AdmissionPolicy,
    Cluster,
    Gpu,
    Node,
    Placement,
    PoolLimit,
    Request,
    Running,
    choose_victims,
    order,
)
from fabric.schedule.quota import Budget, QuotaLedger
from fabric.states import Wait


def gpu_node(node_id: str, gpus: int = 4, cpu: float = 32, mem: float = 80.0, pool: str | None = None) -> Node:
    return Node(node_id, cpu, [Gpu(i, 1.0, mem) for i in range(gpus)], pool)


def req(key: str, gpu: float = 0.0, priority: str = "normal", ready_at: float = 0.0, **kw) -> Request:
    return Request(key, kw.pop("team", "research"), priority, ready_at, kw.pop("cpu", 1.0), gpu, **kw)


def test_priority_first_then_fifo_and_aging_lifts_the_old():
    queue = [req("low-old", priority="low", ready_at=0), req("normal-new", ready_at=90),
             req("high", priority="high", ready_at=95), req("normal-old", ready_at=10)]
    assert [r.key for r in order(queue, now=100, aging_s=1000)] == ["high", "normal-old", "normal-new", "low-old"]
    # Waited 3 aging steps: low counts as critical now, ahead of everything (nothing starves).
    assert order(queue, now=3000, aging_s=1000)[0].key == "low-old"


def test_no_head_of_line_blocking_and_backfill_never_delays_the_reservation():
    cluster = Cluster([gpu_node("n1", gpus=4)])
    running = [Running("r1", "research", "normal", cluster.fit(req("r1", gpu=2)), 1, 2, 0, 100)]
    cluster.take(req("r1", gpu=2), running[0].placement)
    policy = AdmissionPolicy()
    decision = policy.decide(10, [req("big", gpu=4, ready_at=1, estimate_s=50),
                                  req("short", gpu=0.25, ready_at=2, estimate_s=60),
                                  req("long", gpu=0.25, ready_at=3, estimate_s=500),
                                  req("cpu", ready_at=4, estimate_s=500)], cluster, running)
    admitted = [r.key for r, _ in decision.admit]
    # The 4-GPU node cannot start before r1 ends (t=100): it holds that reservation. A quarter GPU that
    # ends by then backfills; one that would still run at t=100 would push it back, so it waits.
    assert decision.reservation == ("big", 100)
    assert admitted == ["short", "cpu"]
    assert decision.waiting["long"].reason.startswith("reservation: would delay big")
    assert decision.waiting["big"].position == 1 and decision.waiting["long"].position == 2


def test_an_urgent_node_behind_the_head_holds_its_own_reservation_too():
    cluster = Cluster([gpu_node("n1", gpus=4), gpu_node("n2", gpus=4)])
    running = []
    for key, gpus, node, ends in (("r1", 4, "n1", 100), ("r2", 2, "n2", 300)):
        placement = Placement(node, tuple((i, 1.0, 0.0) for i in range(gpus)))
        cluster.take(req(key, gpu=gpus), placement)
        running.append(Running(key, "research", "normal", placement, 1, gpus, 0, ends))
    decision = AdmissionPolicy().decide(10, [req("big", gpu=4, priority="critical", ready_at=1, estimate_s=50),
                                             req("urgent", gpu=4, priority="high", ready_at=2, estimate_s=50),
                                             req("short", gpu=0.25, priority="low", ready_at=3, estimate_s=100),
                                             req("long", gpu=0.25, priority="low", ready_at=4, estimate_s=500)],
                                        cluster, running)
    # The critical head starts on n1 at t=100; the high node behind it needs n2 whole at t=300. A quarter
    # GPU on n2 that ends by then backfills; one that would still run then would delay the high node.
    assert decision.reservation == ("big", 100)
    assert decision.waiting["urgent"].reason == "no capacity: reserved to start by 300"
    assert [r.key for r, _ in decision.admit] == ["short"]
    assert decision.waiting["long"].reason.startswith("reservation: would delay urgent (high)")


def test_quarter_gpus_pack_best_fit_so_whole_gpus_stay_whole():
    cluster = Cluster([gpu_node("n1", gpus=4), gpu_node("n2", gpus=4)])
    policy = AdmissionPolicy()
    quarters = [req(f"q{i}", gpu=0.25, ready_at=i) for i in range(16)]
    decision = policy.decide(0, [*quarters, req("four", gpu=4, ready_at=100)], cluster, [])
    placed = {r.key: p for r, p in decision.admit}
    assert set(placed) == {*(q.key for q in quarters), "four"}  # all 17 run at once: no fragmentation stall
    used = {(p.node_id, i) for k, p in placed.items() if k != "four" for i, _, _ in p.gpu_shares}
    assert len(used) == 4  # 16 quarters packed on 4 GPUs, not spread over 8
    assert {i for i, _, _ in placed["four"].gpu_shares} == {0, 1, 2, 3}


def test_gpu_memory_hints_are_never_oversubscribed():
    cluster = Cluster([gpu_node("n1", gpus=1, mem=40.0)])
    decision = AdmissionPolicy().decide(0, [req("a", gpu=0.25, gpu_mem_gb=24), req("b", gpu=0.25, gpu_mem_gb=24)],
                                        cluster, [])
    assert [r.key for r, _ in decision.admit] == ["a"]  # the fractions fit, the memory does not
    assert decision.waiting["b"].reason.startswith("no capacity")


def test_pools_limit_concurrency_and_steer_placement():
    cluster = Cluster([Node("c1", 64, [], "backtest"), gpu_node("g1", pool="training")])
    policy = AdmissionPolicy({"backtest": PoolLimit(2)})
    decision = policy.decide(0, [req(f"b{i}", pool="backtest", ready_at=i) for i in range(3)]
                             + [req("t", gpu=1, pool="training", ready_at=5), req("x", pool="nope", ready_at=6)],
                             cluster, [])
    assert sorted(r.key for r, _ in decision.admit) == ["b0", "b1", "t"]
    assert decision.waiting["b2"].reason == "pool limit: backtest 2/2"
    assert "no node of its pool" in decision.waiting["x"].reason


def test_preemption_picks_the_victims_that_lose_the_fewest_gpu_seconds():
    cluster = Cluster([gpu_node("n1", gpus=2), gpu_node("n2", gpus=2)])
    running = []
    for key, node, gpus, started, priority in [("old", "n1", 2, 0, "low"), ("young", "n2", 2, 90, "low"),
                                                ("vip", "n2", 0, 0, "critical")]:
        placement = Placement(node, tuple((i, 1.0, 0.0) for i in range(gpus)))
        cluster.take(req(key, gpu=gpus), placement)
        running.append(Running(key, "research", priority, placement, 1, gpus, started, 1000, None, True))
    victims = choose_victims(req("urgent", gpu=2, priority="critical"), cluster, running, now=100)
    assert [v.key for v in victims] == ["young"]  # 2 GPUs x 10 s lost, not 2 x 100 s
    assert choose_victims(req("meh", gpu=2, priority="low"), cluster, running, now=100) is None


def test_quota_holds_with_the_reason_and_releases_the_next_day():
    day = dt.datetime(2026, 11, 24, 20, 0, tzinfo=dt.UTC).timestamp()
    now = [day]
    ledger = QuotaLedger("research", Budget(gpu=2, gpu_hours_per_day=2.0), clock=lambda: now[0])
    job = req("train", gpu=2)
    assert ledger.check(job) is None
    ledger.start(job)
    assert str(ledger.check(req("more", gpu=1))) == "quota: team research gpu 2/2 in use"
    now[0] += 3600
    ledger.stop("train")  # 2 GPUs x 1 h: the day's 2 GPU-hours are spent
    assert str(ledger.check(req("next", gpu=1))) == "quota: team research gpu_hours 2.0/2.0 today"
    assert ledger.check(req("cpu only")) is None  # CPU work is not held by a GPU budget
    now[0] += 4 * 3600  # past midnight UTC
    assert ledger.check(req("next", gpu=1)) is None
    assert ledger.snapshot()["gpu_hours_today"] == 0.0


def test_high_priority_bursts_above_the_concurrent_budget_while_credits_last():
    now = [0.0]
    ledger = QuotaLedger("research", Budget(gpu=1, burst_gpu=1, burst_gpu_hours_per_day=0.5), clock=lambda: now[0])
    ledger.start(req("base", gpu=1))
    assert ledger.check(req("normal", gpu=1)) is not None
    urgent = req("urgent", gpu=1, priority="high")
    assert ledger.check(urgent) is None
    ledger.start(urgent)
    now[0] += 1800  # 0.5 burst GPU-hours used
    ledger.stop("urgent")
    assert str(ledger.check(req("again", gpu=1, priority="high"))) == "quota: team research gpu 1/1 in use"


def test_quota_is_booked_as_the_policy_admits_so_one_round_never_overshoots():
    ledger = QuotaLedger("research", Budget(gpu=1), clock=lambda: 0.0)

    def quota(request: Request) -> Wait | None:  # as the engine's admission queue does: one ledger per team
        if request.team != "research":
            return None
        reason = ledger.check(request)
        if reason is None:
            ledger.start(request)
        return reason

    cluster = Cluster([gpu_node("n1", gpus=4)])
    decision = AdmissionPolicy().decide(0, [req("a", gpu=1, ready_at=0), req("b", gpu=1, ready_at=1),
                                            req("c", gpu=1, ready_at=2, team="trading")], cluster, [], quota)
    assert sorted(r.key for r, _ in decision.admit) == ["a", "c"]
    assert decision.waiting["b"].reason == "quota: team research gpu 1/1 in use"


def test_on_demand_work_never_lands_on_spot_and_spot_ok_work_prefers_it():
    cluster = Cluster([Node("od", 8, [], None, spot=False), Node("spot", 8, [], None, spot=True)])
    decision = AdmissionPolicy().decide(0, [req("batch", spot_ok=True, ready_at=0), req("api", ready_at=1)],
                                        cluster, [])
    placed = {r.key: p.node_id for r, p in decision.admit}
    assert placed == {"batch": "spot", "api": "od"}
    full = Cluster([Node("spot", 8, [], None, spot=True)])
    decision = AdmissionPolicy().decide(0, [req("api")], full, [])
    assert decision.admit == () and decision.waiting["api"].reason.startswith("no capacity")


def test_a_shape_that_cannot_fit_on_demand_still_fits_spot_ok_in_the_same_round():
    cluster = Cluster([Node("spot", 8, [], None, spot=True)])
    decision = AdmissionPolicy().decide(0, [req("api", ready_at=0), req("batch", spot_ok=True, ready_at=1)],
                                        cluster, [])
    assert [r.key for r, _ in decision.admit] == ["batch"]


def test_a_booking_twice_counts_once():
    ledger = QuotaLedger("research", Budget(gpu=4), clock=lambda: 0.0)
    job = req("a", gpu=1)
    ledger.start(job)
    ledger.start(job)
    assert ledger.snapshot()["gpu_in_use"] == 1.0
    ledger.stop("a")
    assert ledger.snapshot()["gpu_in_use"] == 0.0


def test_a_node_that_names_a_spot_pool_runs_there_whatever_its_qos():
    cluster = Cluster([Node("g", 8, [Gpu(0)], "gpu-spot", spot=True)])
    decision = AdmissionPolicy().decide(0, [req("train", gpu=1, pool="gpu-spot")], cluster, [])
    assert [r.key for r, _ in decision.admit] == ["train"]


def test_gpu_first_work_takes_a_gpu_when_one_is_free_and_cpus_once_it_has_waited_out_its_fallback():
    policy = AdmissionPolicy()
    busy = [Running("hog", "research", "normal", Placement("n1", tuple((g, 1.0, 0.0) for g in range(4))), 1, 4,
                    0.0, 500.0)]
    prefers_gpu = req("gpu-first", gpu=1, ready_at=100.0, fallback_cpu=6.0, fallback_after_s=60.0)

    def full() -> Cluster:
        cluster = Cluster([gpu_node("n1", gpus=4, cpu=16)])
        cluster.take(Request("hog", "research", cpu=1, gpu=4), busy[0].placement)
        return cluster

    early = policy.decide(130.0, [prefers_gpu], full(), busy)
    assert early.admit == () and "(CPU fallback at 160)" in early.waiting["gpu-first"].reason
    [(on_cpu, placement)] = policy.decide(161.0, [prefers_gpu], full(), busy).admit
    assert placement.cpu_fallback and placement.gpu_shares == ()
    assert (on_cpu.gpu, on_cpu.cpu) == (0.0, 6.0)  # booked as the CPU work it now is
    [(on_gpu, placement)] = policy.decide(161.0, [prefers_gpu], Cluster([gpu_node("n1")]), []).admit
    assert not placement.cpu_fallback and on_gpu.gpu == 1 and len(placement.gpu_shares) == 1
