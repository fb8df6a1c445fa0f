"""Scheduling on a real multi-node Ray (`ray.cluster_utils.Cluster`: a head and three nodes of 4 fake
GPUs each): priority order and a low wait for high work while low work saturates the cluster,
preemption of low spot work by a critical node within the threshold, pool limits, packing of 16
quarter-GPU nodes beside a 4-GPU one without a stall, and the per-team quota actors: a race of
admissions never overspends, a spent day's GPU-hours hold work with the reason and the next day
releases it (clock injected), and a killed quota actor fails closed and comes back."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.conftest import REPO
from tests.reliability.results import record

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

SCHEDULING = """
aging_s: 3600
preempt_after_s: 1
cost: {cpu_hour: 0.0, gpu_hour: 36.0}
pools:
  batch: {max_concurrency: 2, cost: {cpu_hour: 3.6, gpu_hour: 36.0}}  # every GPU node is in it
quotas:
  research: {gpu: 2}
"""
PREEMPT_AFTER_S = 1.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    import fabric as fb

    home = tmp_path_factory.mktemp("fabric-home")
    (home / "scheduling.yaml").write_text(SCHEDULING)
    os.chdir(REPO)  # workers import `tests.nodes` from the driver's working directory
    ray_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(3):
        ray_cluster.add_node(num_cpus=2, num_gpus=4, resources={"pool:batch": 1000})
    ray.init(address=ray_cluster.address, log_to_driver=False)
    client = fb.connect(home=str(home))
    yield client, ray_cluster
    ray.shutdown()
    ray_cluster.shutdown()


def dag(name: str, nodes: list[dict], priority: str = "normal", qos: str | None = None) -> dict:
    slo = {"priority": priority, "retry": {"max_attempts": 1}, **({"qos": qos} if qos else {})}
    return {"version": 1, "pipeline_id": name, "slo": slo, "nodes": nodes}


def work(node_id: str, gpu: float, seconds: float, **extra) -> dict:
    return {"id": node_id, "kind": "python_task", "entrypoint": "tests.nodes:gpu_probe", "params": {"seconds": seconds},
            "resources": {"cpu": "50m", "gpu": gpu}, **extra}


def wait_for(predicate, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def free_per_node() -> dict[str, dict[str, float]]:
    """What Ray has free on each node (a failure says where the work really went)."""
    from ray._private import state

    return {node[:6]: {k: v for k, v in free.items() if k in ("CPU", "GPU")}
            for node, free in state.available_resources_per_node().items()}


def waits(status) -> list[float]:
    return [n.started_at - n.queued_at for n in status.nodes]


def test_high_priority_waits_little_while_low_work_saturates_every_gpu(cluster):
    client, _ = cluster
    low = client.submit(dag("low", [work(f"l{i}", 4, 2.0) for i in range(6)], "low"))  # 2 waves over 3 nodes
    wait_for(lambda: sum(n.state == "RUNNING" for n in low.status().nodes) == 3, what="the cluster to fill")
    high = client.submit(dag("high", [work("h", 4, 0.2)], "high"))
    time.sleep(0.4)
    assert "queue #1: no capacity" in high.status().node("h").reason  # first in line, ahead of 3 queued low
    high_done, low_done = high.wait(60), low.wait(60)
    assert high_done.state == "SUCCEEDED" and low_done.state == "SUCCEEDED"
    second_wave = sorted(n.started_at for n in low_done.nodes)[3:]
    assert high_done.node("h").started_at <= min(second_wave) + 0.05, "high ran after low work that queued first"
    assert max(waits(high_done)) < max(waits(low_done))


def test_a_critical_node_preempts_low_spot_work_filling_every_gpu_within_the_threshold(cluster):
    client, _ = cluster
    spot = client.submit(dag("spot", [work(f"s{i}", 4, 30.0) for i in range(3)], "low", "spot_ok"))
    wait_for(lambda: all(n.state == "RUNNING" for n in spot.status().nodes), what="spot work on every GPU")
    critical = client.submit(dag("critical", [work("c", 1, 0.1)], "critical"))
    try:
        done = critical.wait(30)
    except Exception:
        raise AssertionError((free_per_node(), critical.status(), spot.status(), client.queues())) from None
    node = done.node("c")
    assert done.state == "SUCCEEDED"
    assert node.started_at - node.queued_at <= PREEMPT_AFTER_S + 3.0, "it did not start within the threshold"
    status = spot.status()
    preempted = [n for n in status.nodes if n.history and n.history[0].outcome == "QUEUED"]
    assert len(preempted) == 1, "the fewest GPU-seconds lost: one 4-GPU victim, not more"
    assert all(n.state != "FAILED" for n in status.nodes)  # a preemption is not a failure
    spot.cancel()
    assert spot.wait(30).state == "CANCELLED"


def test_a_pool_runs_at_most_its_limit_at_once(cluster):
    client, _ = cluster
    run = client.submit(dag("pooled", [work(f"p{i}", 0, 0.8, pool="batch") for i in range(5)]))
    time.sleep(0.5)
    reasons = [n.reason for n in run.status().nodes if n.state == "QUEUED"]
    assert reasons and all("pool limit: batch 2/2" in r for r in reasons)
    done = run.wait(60)
    assert done.state == "SUCCEEDED"
    assert done.cost == pytest.approx(sum(0.05 * 0.001 * n.duration for n in done.nodes), rel=0.1)  # 50m at 3.6
    spans = [(n.started_at, n.ended_at) for n in done.nodes]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2, "more than 2 batch nodes ran at once"


def test_sixteen_quarter_gpu_nodes_and_a_four_gpu_node_run_without_a_fragmentation_stall(cluster):
    client, _ = cluster
    nodes = [work(f"q{i:02d}", 0.25, 4.0) for i in range(16)] + [work("whole", 4, 0.5)]
    # The quarters first: placed one per GPU, they would leave no node with 4 free GPUs for `whole`.
    done = client.submit(dag("packing", nodes)).wait(120)
    assert done.state == "SUCCEEDED"
    quarters = [n for n in done.nodes if n.node_id.startswith("q")]
    whole = done.node("whole")
    assert whole.started_at < min(q.ended_at for q in quarters), "the 4-GPU node waited for quarters to end"
    run = client.get(done.submission_id)
    gpus = {run.result(q.node_id) for q in quarters}
    assert len(gpus) == 4, f"16 quarters should share exactly 4 GPUs, got {sorted(gpus)}"
    # 36 an hour per GPU is 0.01 a GPU-second. A node is charged while it holds its booking: from its
    # admission (before its worker starts) until its end is recorded; so at least its run, at most its
    # time since it was queued.
    for n in done.nodes:
        gpu_rate = (0.25 if n.node_id.startswith("q") else 4) * 0.01
        assert gpu_rate * (n.ended_at - n.started_at) * 0.95 <= n.cost, n.node_id
        assert n.cost <= gpu_rate * (n.ended_at - n.queued_at) * 1.05 + 0.01, n.node_id
    assert done.cost == pytest.approx(sum(n.cost for n in done.nodes))


def test_racing_admissions_never_overspend_a_quota_actor(cluster, tmp_path):
    from fabric.actors.guard import Capped
    from fabric.actors.quota import QuotaActor
    from fabric.capability import load_or_create_key, quota_cap
    from fabric.schedule.admission import Request

    key_file = tmp_path / "control.key"
    keeper = Capped(QuotaActor.options(max_concurrency=1).remote("racers", str(key_file)),
                    quota_cap(load_or_create_key(key_file)))
    import ray

    ray.get(keeper.sync.remote({"gpu": 3}, {"day": "2026-11-24", "running": {}}, 0.0))
    peaks: list[float] = []
    accepted: list[str] = []

    def admitter(worker: int) -> None:
        for i in range(20):
            reply = ray.get(keeper.book.remote([Request(f"w{worker}-{i}", "racers", gpu=1)], time.time()))
            accepted.extend(reply[0])
            peaks.append(sum(v[1] for v in reply[2]["running"].values()))
            if reply[0] and i % 3 == 0:
                ray.get(keeper.release.remote(reply[0], time.time()))
                accepted.remove(reply[0][0])

    threads = [threading.Thread(target=admitter, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    final = ray.get(keeper.state.remote(time.time()))
    assert max(peaks) == 3, "the budget of 3 GPUs was exceeded or never used to the full"
    assert sorted(final["running"]) == sorted(accepted)  # the actor and the admitters agree
    ray.kill(keeper.handle)


def test_a_spent_day_holds_work_with_the_reason_and_the_next_day_releases_it(cluster, tmp_path):
    """The engine's scheduler with an injected clock, booking through a real quota actor."""
    from functools import partial

    from fabric.actors.quota import get_or_create_quota_actor
    from fabric.execute.quotas import ActorQuotaBook
    from fabric.execute.scheduler import ray_nodes
    from fabric.plan import compile_plan
    from fabric.schedule.queue import AdmissionQueue, SchedulingConfig
    from fabric.schedule.quota import Budget
    from fabric.schedule.run import RunMachine
    from fabric.spec import load_spec
    from fabric.types import AttemptReport

    day = 1_795_000_000.0  # 2026-11-18 07:06 UTC
    now = [day]
    config = SchedulingConfig(quotas={"nightly": Budget(gpu=4, gpu_hours_per_day=1.0)})
    scheduler = AdmissionQueue(config, lambda: now[0], nodes=ray_nodes,
                               quotas=partial(ActorQuotaBook, actor=partial(get_or_create_quota_actor,
                                                                            key_file=str(tmp_path / "control.key"))))

    def machine(name: str) -> RunMachine:
        plan = compile_plan(load_spec(dag(name, [work("w", 1, 0)])))
        m = RunMachine(plan, lambda: now[0], submission_id=name, gated=True)
        m.start()
        return m

    first = machine("first")
    admitted: list = []

    def first_admitted() -> bool:  # the first contact creates the team's quota actor: slow on a busy machine
        admitted.extend(scheduler.admit([("first", first, "nightly")]))
        return bool(admitted)
    wait_for(first_admitted, timeout=60, what="the quota actor's first answer")
    [(_, node_id, _)] = admitted
    first.admit(node_id)
    now[0] += 3600  # one GPU-hour: the day's budget
    first.on_result("w", first.nodes["w"].token, AttemptReport())
    scheduler.on_transitions("first", first.drain_transitions())
    second = machine("second")
    assert scheduler.admit([("second", second, "nightly")]) == []
    assert second.nodes["w"].reason == "queue #1: quota: team nightly gpu_hours 1.0/1.0 today"
    now[0] += 24 * 3600  # the next UTC day
    assert [(sid, n) for sid, n, _ in scheduler.admit([("second", second, "nightly")])] == [("second", "w")]


def test_a_quota_actor_that_cannot_answer_admits_nothing(cluster, tmp_path):
    import ray

    from fabric.actors.quota import QuotaActor
    from fabric.execute.quotas import ActorQuotaBook
    from fabric.schedule.admission import Request
    from fabric.schedule.quota import Budget

    dead = QuotaActor.remote("gone", str(tmp_path / "control.key"))
    ray.kill(dead, no_restart=True)
    book = ActorQuotaBook({"gone": Budget(gpu=8)}, time.time, actor=lambda team: dead)
    request = Request("s/w", "gone", gpu=1)
    try:
        # Never awaited: until its actor has answered, the team is held, and the book says why at once.
        assert str(book.check(request)) == "quota: team gone quota actor unavailable (held until it answers)"
        wait_for(lambda: "held until it answers: " in str(book.check(request)) or "did not answer" in str(
            book.check(request)), timeout=30, what="the sync thread to find the actor dead")
        assert book.snapshot()[0]["gpu_in_use"] == 0.0  # nothing was booked (fail closed)
    finally:
        book.close()  # its sync thread lives in this driver: it must not call Ray once the module's Ray is gone


def test_a_killed_quota_actor_fails_closed_and_comes_back(cluster):
    import ray

    client, _ = cluster
    research = client.for_team("research")
    first = research.submit(dag("q1", [work("w", 2, 3.0)]))
    wait_for(lambda: first.status().node("w").state == "RUNNING", what="research's first node")
    actor = ray.get_actor("fabric-quota:research", namespace="fabric")
    killed_at = time.time()
    ray.kill(actor, no_restart=True)  # killed for good: the registry makes a new one and tells it what runs
    second = research.submit(dag("q2", [work("w", 1, 0.1)]))
    samples = []
    while second.status().node("w").state in ("PENDING", "QUEUED"):
        samples.append(research.queues()["quotas"][0]["gpu_in_use"])
        time.sleep(0.2)
    assert max(samples) <= 2, "the research budget (2 GPUs) was exceeded while its actor was down"
    done = second.wait(30)
    assert done.state == "SUCCEEDED"
    assert done.node("w").started_at >= first.wait(30).node("w").ended_at - 0.5, "it ran over the budget"
    def remade() -> bool:  # made again by the sync thread once the dead one failed a call (asynchronously)
        try:
            return ray.get_actor("fabric-quota:research", namespace="fabric") is not None
        except ValueError:
            return False
    wait_for(remade, timeout=30, what="a new quota actor for research")
    record("fault", "quota actor killed for good", recovered_s=round(done.node("w").started_at - killed_at, 2),
           quota_ticks=len(samples), ticks_over_quota=0, research_gpu_peak=max(samples),
           outcome="held while no actor answered; a new actor, synced with what runs, admitted within the budget")


def test_multi_gpu_and_multi_worker_nodes_run_in_placement_groups(cluster):
    from ray.util.placement_group import placement_group_table

    client, _ = cluster
    probe = {"kind": "python_task", "entrypoint": "tests.nodes:group_probe"}
    run = client.submit(dag("groups", [
        {"id": "packed", **probe, "resources": {"cpu": "50m", "gpu": 2, "workers": 2, "placement": "STRICT_PACK"}},
        {"id": "spread", **probe, "resources": {"cpu": "50m", "workers": 3, "placement": "STRICT_SPREAD"}},
        {"id": "two_gpus", **probe, "resources": {"cpu": "50m", "gpu": 2}},
        {"id": "plain", **probe, "resources": {"cpu": "50m", "gpu": 1}},
    ]))
    assert run.wait(60).state == "SUCCEEDED"
    packed, spread, two_gpus = run.result("packed"), run.result("spread"), run.result("two_gpus")
    assert packed["strategy"] == "STRICT_PACK" and len(packed["nodes"]) == 2 and len(set(packed["nodes"])) == 1
    assert spread["strategy"] == "STRICT_SPREAD" and len(set(spread["nodes"])) == 3
    assert two_gpus["strategy"] == "STRICT_PACK" and len(two_gpus["nodes"]) == 1
    assert packed["here"] == packed["nodes"][0]  # the node's own code runs in bundle 0
    assert run.result("plain") == {}, "a one-GPU, one-worker node is a plain task"
    for result in (packed, spread, two_gpus):  # the groups go when their attempts end
        deadline = time.monotonic() + 10
        while placement_group_table()[result["id"]]["state"] != "REMOVED":
            assert time.monotonic() < deadline, "a finished node's placement group was left behind"
            time.sleep(0.2)


def test_a_node_that_just_joined_counts_for_feasibility_though_submits_read_a_cached_cluster_view(cluster):
    from fabric.errors import ErrorCode, SpecError
    from fabric.execute.backend import HEAD_LOOKUP_EVERY_S

    client, ray_cluster = cluster
    needs = {"id": "n", "kind": "python_task", "entrypoint": "tests.nodes:value",
             "resources": {"cpu": "50m", "custom": {"fresh_kind": 1}}}
    with pytest.raises(SpecError) as caught:  # the refusal looked at the cluster just now
        client.submit(dag("fresh", [needs]))
    assert caught.value.problems[0].code == ErrorCode.RESOURCES_INFEASIBLE
    refused_at = time.monotonic()
    ray_cluster.add_node(num_cpus=1, resources={"fresh_kind": 1})
    run = client.submit(dag("fresh", [needs]))  # the cached view has no such node: only a fresh look finds it
    assert time.monotonic() - refused_at < HEAD_LOOKUP_EVERY_S, "the cached view expired: this proves nothing"
    assert run.wait(60).state == "SUCCEEDED"
