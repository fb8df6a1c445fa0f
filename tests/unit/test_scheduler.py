"""The engine's admission queue (fabric/schedule/queue.py) without Ray: real gated RunMachines, an injected
cluster and clock, a real store. Budgets hold under many interleaved admissions, and a team's day of use
survives a restart."""

from __future__ import annotations

import random

import pytest

from fabric.execute.scheduler import StoreQuotaJournal
from fabric.plan import compile_plan
from fabric.record import MemoryStore
from fabric.schedule.admission import Gpu, Node
from fabric.schedule.queue import AdmissionQueue as Scheduler
from fabric.schedule.queue import SchedulingConfig
from fabric.schedule.quota import Budget
from fabric.schedule.run import RunMachine
from fabric.spec import load_spec
from fabric.types import AttemptReport

pytestmark = pytest.mark.timeout(60)

DAY = 1_764_000_000.0  # 2025-11-24 16:00 UTC


def one_gpu_run(submission_id: str, clock) -> RunMachine:
    spec = load_spec({"version": 1, "pipeline_id": "p", "nodes": [
        {"id": "work", "kind": "python_task", "entrypoint": "m:f", "resources": {"cpu": 1, "gpu": 1}}]})
    machine = RunMachine(compile_plan(spec), clock, submission_id=submission_id, gated=True)
    machine.start()
    return machine


def cluster() -> list[Node]:
    return [Node(f"n{i}", 16.0, [Gpu(g, 1.0, 80.0) for g in range(4)]) for i in range(4)]


def test_many_interleaved_admissions_never_exceed_a_teams_budget():
    now = [DAY]
    config = SchedulingConfig(quotas={"research": Budget(gpu=3)})
    scheduler = Scheduler(config, lambda: now[0], nodes=cluster)
    rng = random.Random(3)
    runs = {f"s{i}": (one_gpu_run(f"s{i}", lambda: now[0]), rng.choice(["research", "trading"])) for i in range(120)}
    running: list[str] = []
    peak = 0
    for _ in range(400):
        for sid, node_id, _placement in scheduler.admit((sid, m, team) for sid, (m, team) in runs.items()):
            runs[sid][0].admit(node_id)
            running.append(sid)
        in_use = sum(1 for sid in running if runs[sid][1] == "research")
        peak = max(peak, in_use)
        assert in_use <= 3, "the research budget was exceeded"
        assert scheduler.quotas()[0]["gpu_in_use"] == in_use  # the ledger agrees with what runs
        for sid in rng.sample(running, k=min(len(running), rng.randint(0, 3))):  # some attempts end
            machine = runs[sid][0]
            machine.on_result("work", machine.nodes["work"].token, AttemptReport())
            scheduler.on_transitions(sid, machine.drain_transitions())
            running.remove(sid)
        now[0] += 1.0
    assert peak == 3 and all(m.done for m, _ in runs.values())  # the budget was used, and everything ran


def test_a_teams_use_of_the_day_survives_a_restart_but_not_midnight():
    store, now = MemoryStore(), [DAY]
    config = SchedulingConfig(quotas={"research": Budget(gpu=4, gpu_hours_per_day=1.5)})
    first = Scheduler(config, lambda: now[0], nodes=cluster, journal=StoreQuotaJournal(store))
    machine = one_gpu_run("s1", lambda: now[0])
    [(sid, node_id, _)] = first.admit([("s1", machine, "research")])
    machine.admit(node_id)
    now[0] += 3600  # one GPU-hour
    machine.on_result("work", machine.nodes["work"].token, AttemptReport())
    first.on_transitions("s1", machine.drain_transitions())

    restarted = Scheduler(config, lambda: now[0], nodes=cluster, journal=StoreQuotaJournal(store))
    assert restarted.quotas()[0]["gpu_hours_today"] == pytest.approx(1.0)
    now[0] += 8 * 3600  # the next UTC day
    assert Scheduler(config, lambda: now[0], nodes=cluster,
                     journal=StoreQuotaJournal(store)).quotas()[0]["gpu_hours_today"] == 0.0


def spec_run(submission_id: str, clock, *, gpu: float, priority: str = "normal", qos: str | None = None) -> RunMachine:
    slo = {"priority": priority, **({"qos": qos} if qos else {})}
    spec = load_spec({"version": 1, "pipeline_id": "p", "slo": slo, "nodes": [
        {"id": "work", "kind": "python_task", "entrypoint": "m:f", "resources": {"cpu": 1, "gpu": gpu}}]})
    machine = RunMachine(compile_plan(spec), clock, submission_id=submission_id, gated=True)
    machine.start()
    return machine


def test_no_preemption_for_a_node_that_its_own_quota_holds():
    now = [DAY]
    config = SchedulingConfig(quotas={"a": Budget(gpu=1)}, preempt_after_s=1)
    one_node = lambda: [Node("n", 16.0, [Gpu(g, 1.0, 80.0) for g in range(4)])]  # noqa: E731
    scheduler = Scheduler(config, lambda: now[0], nodes=one_node)
    runs = {"a1": (spec_run("a1", lambda: now[0], gpu=1), "a"),
            "victim": (spec_run("victim", lambda: now[0], gpu=3, priority="low", qos="spot_ok"), "b")}
    for sid, node_id, _ in scheduler.admit((sid, m, t) for sid, (m, t) in runs.items()):
        runs[sid][0].admit(node_id)
    runs["urgent"] = (spec_run("urgent", lambda: now[0], gpu=1, priority="critical"), "a")
    for _ in range(5):
        now[0] += 2
        assert scheduler.admit((sid, m, t) for sid, (m, t) in runs.items()) == []
        assert scheduler.victims() == [], "freeing GPUs cannot help a node its own quota holds"


def test_a_booking_on_a_vanished_node_does_not_break_a_round(monkeypatch):
    import fabric.schedule.queue as scheduler_module

    monkeypatch.setattr(scheduler_module, "CLUSTER_REFRESH_S", 0.0)
    now = [DAY]
    nodes = [[Node("a", 16.0, [Gpu(0, 1.0, 80.0)]), Node("b", 16.0, [Gpu(0, 1.0, 80.0)])]]
    scheduler = Scheduler(SchedulingConfig(preempt_after_s=0), lambda: now[0], nodes=lambda: nodes[0])
    runs = {sid: spec_run(sid, lambda: now[0], gpu=1, priority="low", qos="spot_ok") for sid in ("s0", "s1")}
    placed = {}
    for sid, node_id, placement in scheduler.admit((sid, m, "t") for sid, m in runs.items()):
        runs[sid].admit(node_id)
        placed[sid] = placement.node_id
    nodes[0] = [n for n in nodes[0] if n.node_id != placed["s1"]]  # reclaimed before s1's failure arrives
    now[0] += 5
    runs["s2"] = spec_run("s2", lambda: now[0], gpu=1, priority="critical")
    assert scheduler.admit((sid, m, "t") for sid, m in runs.items()) == []  # s0 holds the one GPU left
    assert scheduler.queue[0]["reason"].startswith("no capacity")
    assert [(sid, node) for sid, node, _ in scheduler.victims()] == [("s0", "work")]  # not the vanished one


def test_an_attempt_costs_its_resource_seconds_at_the_rates_of_the_pool_it_ran_in():
    from fabric.execute.finished import status_of
    from fabric.execute.scheduler import cost_events
    from fabric.record import Event, SubmissionRecord
    from fabric.record.replay import status_from_events
    from fabric.schedule.queue import Rate

    now = [DAY]
    spot = [Node("s1", 16.0, [Gpu(0, 1.0, 80.0)], "gpu-spot", spot=True)]
    config = SchedulingConfig(cost=Rate(cpu_hour=0.05, gpu_hour=3.0), pool_costs={"gpu-spot": Rate(0.01, 0.9)})
    scheduler = Scheduler(config, lambda: now[0], nodes=lambda: spot)
    spec = {"version": 1, "pipeline_id": "p", "slo": {"qos": "spot_ok"}, "nodes": [
        {"id": "work", "kind": "python_task", "entrypoint": "m:f", "resources": {"cpu": 2, "gpu": 1}}]}
    machine = RunMachine(compile_plan(load_spec(spec)), lambda: now[0], submission_id="s1", gated=True)
    machine.start()
    [(_, node_id, _)] = scheduler.admit([("s1", machine, "research")])
    machine.admit(node_id)
    now[0] += 1800  # half an hour on the spot pool: (2 CPUs x 0.01 + 1 GPU x 0.9) / 2
    machine.on_result("work", machine.nodes["work"].token, AttemptReport())
    transitions = machine.drain_transitions()
    [charge] = scheduler.on_transitions("s1", transitions, machine)
    assert charge.amount == pytest.approx(0.46) and (charge.node_id, charge.attempt) == ("work", 1)
    [event] = cost_events("s1", [charge])  # the row the engine records
    assert float(event.reason) == pytest.approx(0.46)
    assert status_of(machine, "s1").cost == pytest.approx(0.46)
    assert status_of(machine, "s1").to_dict()["nodes"][0]["cost"] == pytest.approx(0.46)
    record = SubmissionRecord("s1", "p", spec, {}, "plan", "request", DAY, team="research")
    events = [Event("s1", t.node_id, t.source, t.target, t.at, t.attempt, t.reason) for t in transitions]
    assert status_from_events(record, [*events, event]).cost == pytest.approx(0.46)  # it survives a restart


def chain_run(submission_id: str, clock, members: int) -> RunMachine:
    nodes = [{"id": f"m{i}", "kind": "python_task", "entrypoint": "m:f", "resources": {"cpu": 1}}
             for i in range(members)]
    edges = [{"from": f"m{i}", "to": f"m{i + 1}"} for i in range(members - 1)]
    plan = compile_plan(load_spec({"version": 1, "pipeline_id": "chain", "nodes": nodes, "edges": edges}))
    assert [plan.nodes[f"m{i}"].fused_after for i in range(members)] == [None, *(f"m{i}" for i in range(members - 1))]
    machine = RunMachine(plan, clock, submission_id=submission_id, gated=True)
    machine.start()
    return machine


def test_a_fused_chain_holds_its_booking_until_its_last_member_ends_and_pays_for_each():
    """A fused chain runs as one Ray task, admitted through its first member: the booking (capacity and quota)
    passes from member to member, so other work does not take the slot the task still holds and a team's long
    chain is charged for all of it, each member for its own part."""
    from fabric.schedule.queue import Rate

    now = [DAY]
    config = SchedulingConfig(quotas={"research": Budget(cpu=1)}, cost=Rate(cpu_hour=1.0, gpu_hour=0.0))
    scheduler = Scheduler(config, lambda: now[0], nodes=lambda: [Node("n", 2.0, [])])
    chain = chain_run("chain", lambda: now[0], 3)
    other = spec_run("other", lambda: now[0], gpu=0)
    runs = {"chain": chain}
    [(_, head, _)] = scheduler.admit((sid, m, "research") for sid, m in runs.items())
    assert head == "m0"
    chain.admit(head)
    runs["other"] = other  # the same team: its one-CPU budget is held by the chain's task
    charges = []
    for member in ("m0", "m1", "m2"):
        assert scheduler.admit((sid, m, "research") for sid, m in runs.items()) == []
        assert scheduler.quotas()[0]["cpu_in_use"] == 1.0
        now[0] += 3600  # each member runs an hour
        chain.on_result(member, chain.nodes[member].token, AttemptReport())
        charges += scheduler.on_transitions("chain", chain.drain_transitions(), chain)
    assert chain.done and chain.nodes["m2"].state.value == "SUCCEEDED"
    assert [(c.node_id, round(c.amount, 6)) for c in charges] == [("m0", 1.0), ("m1", 1.0), ("m2", 1.0)]
    assert scheduler.quotas()[0]["cpu_in_use"] == 0.0
    assert [sid for sid, _, _ in scheduler.admit((sid, m, "research") for sid, m in runs.items())] == ["other"]


def test_a_fused_member_that_fails_gives_the_chains_booking_back_and_its_retry_is_admitted_anew():
    from fabric.types import ErrorInfo

    now = [DAY]
    scheduler = Scheduler(SchedulingConfig(quotas={"research": Budget(cpu=1)}), lambda: now[0],
                          nodes=lambda: [Node("n", 2.0, [])])
    nodes = [{"id": f"m{i}", "kind": "python_task", "entrypoint": "m:f", "resources": {"cpu": 1}} for i in range(3)]
    spec = {"version": 1, "pipeline_id": "chain", "nodes": nodes,
            "slo": {"retry": {"max_attempts": 2, "backoff_sec": 0}},
            "edges": [{"from": "m0", "to": "m1"}, {"from": "m1", "to": "m2"}]}
    chain = RunMachine(compile_plan(load_spec(spec)), lambda: now[0], submission_id="chain", gated=True)
    chain.start()
    [(_, head, _)] = scheduler.admit([("chain", chain, "research")])
    chain.admit(head)
    chain.on_result("m0", chain.nodes["m0"].token, AttemptReport())
    scheduler.on_transitions("chain", chain.drain_transitions(), chain)
    assert scheduler.quotas()[0]["cpu_in_use"] == 1.0  # m1 runs in the chain's task
    chain.on_result("m1", chain.nodes["m1"].token, AttemptReport(), ErrorInfo("ValueError", "boom"))
    now[0] += 1
    scheduler.on_transitions("chain", chain.drain_transitions(), chain)
    assert scheduler.quotas()[0]["cpu_in_use"] == 0.0
    admitted = []
    for _ in range(3):  # its backoff ends, it waits again, it is admitted through its own booking
        now[0] += 1
        chain.tick()
        for _, node_id, _ in scheduler.admit([("chain", chain, "research")]):
            chain.admit(node_id)
            admitted.append(node_id)
        scheduler.on_transitions("chain", chain.drain_transitions(), chain)
    assert admitted == ["m1"] and scheduler.quotas()[0]["cpu_in_use"] == 1.0
