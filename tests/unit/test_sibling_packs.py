"""Ready siblings packed into one Ray task with admission on (schedule/riders.py, plan/fuse.py `packable`):
which plain nodes may ride, how a pack is sized by the run times seen so far, and that a pack holds one booking
until its last member ends while each member keeps its own attempt."""

from __future__ import annotations

from typing import Any

import pytest

from fabric.execute.fusion import admitted_packs
from fabric.plan import compile_plan
from fabric.plan.fuse import packable
from fabric.schedule.actions import Dispatch
from fabric.schedule.admission import Node
from fabric.schedule.queue import AdmissionQueue, SchedulingConfig
from fabric.schedule.quota import Budget
from fabric.schedule.riders import PACK_BUDGET_S
from fabric.schedule.run import RunMachine
from fabric.spec import load_spec
from fabric.states import NodeState
from fabric.types import AttemptReport

pytestmark = pytest.mark.timeout(30)

T0 = 1_764_000_000.0


def _node(node_id: str, ins: list[str] | None = None, entry: str = "m:f", **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "kind": "python_task", "entrypoint": entry, "outs": [node_id], "ins": ins or [], **extra}


def fan(width: int, **extra: Any) -> dict[str, Any]:
    middle = [_node(f"m{i}", ["src"], **extra) for i in range(width)]
    return {"version": 1, "pipeline_id": "fan", "nodes": [
        _node("src", entry="m:src"), *middle, _node("sink", [f"m{i}" for i in range(width)], entry="m:sink")]}


def test_plain_siblings_may_ride_but_not_chain_members_conditions_gpus_or_fuse_false() -> None:
    plan = compile_plan(load_spec({"version": 1, "pipeline_id": "p", "nodes": [
        _node("a"), _node("b", ["a"]), _node("c", ["b"]),  # a -> b -> c: one fused chain
        _node("free"), _node("gpu", resources={"gpu": 1}), _node("cond", when="true"),
        _node("alone", fuse=False), _node("deadline", slo={"max_runtime": "30s"}),
        _node("spot", slo={"qos": "spot_ok"}), _node("hook", on_exit="always"), _node("cached", cache=True),
        _node("runs_anyway", ["free"], on_skipped="run")]}))
    # A cache node rides once its check missed: it waits held (never a rider) until then.
    assert {n for n, node in plan.nodes.items() if packable(node)} == {"free", "cached"}
    assert not any(packable(node) for node in compile_plan(load_spec(fan(4)), fuse=False).nodes.values())


class Gated:
    """One submission under admission, as the engine drives it (execute/engine.py `_admit`)."""

    def __init__(self, spec: dict[str, Any], cpus: float = 2.0) -> None:
        self.now = T0
        self.plan = compile_plan(load_spec(spec))
        self.machine = RunMachine(self.plan, lambda: self.now, submission_id="s", gated=True)
        self.queue = AdmissionQueue(SchedulingConfig(quotas={"research": Budget(cpu=cpus)}), lambda: self.now,
                                    nodes=lambda: [Node("n", 8.0, [])])
        self.tokens: dict[str, int] = {}
        self.machine.start()

    def admit_round(self) -> list[list[Dispatch]]:
        """Each admission's dispatches, grouped into Ray tasks as the dispatcher groups them."""
        tasks = []
        for _ in range(4):  # a round may admit one new waiting node at a time
            for _, node_id, _ in self.queue.admit([("s", self.machine, "research")]):
                actions = self.machine.admit(node_id)
                if not actions:  # it rode in an earlier admission of this round: its booking goes back
                    self.queue.release(f"s/{node_id}")
                dispatched = [a for a in actions if isinstance(a, Dispatch)]
                self.tokens.update({d.node_id: d.token for d in dispatched})
                packs = admitted_packs(actions, self.machine.pack_next)
                riders = {d.node_id for pack in packs.values() for d in pack[1:]}
                tasks += [packs.get(d.node_id, [d]) for d in dispatched if d.node_id not in riders]
            self.queue.on_transitions("s", self.machine.drain_transitions(), self.machine)
            self.now += 1
        return tasks

    def ok(self, *nodes: str, took: float = 0.001) -> None:
        for node in nodes:
            self.machine.on_result(node, self.tokens[node], AttemptReport(started_at=self.now,
                                                                           ended_at=self.now + took))
        self.queue.on_transitions("s", self.machine.drain_transitions(), self.machine)

    def fail(self, node: str) -> None:
        from fabric.types import ErrorInfo

        self.machine.on_result(node, self.tokens[node], AttemptReport(), ErrorInfo("ValueError", "no"))
        self.queue.on_transitions("s", self.machine.drain_transitions(), self.machine)


def test_siblings_ride_once_one_has_run_and_a_pack_holds_one_booking_until_its_last_member_ends() -> None:
    run = Gated(fan(1000))
    [[src]] = run.admit_round()
    run.ok(src.node_id)
    first = run.admit_round()
    # Nothing has run this code yet: the first two go alone, one per CPU of the budget.
    assert [[d.node_id for d in task] for task in first] == [["m0"], ["m1"]]
    run.ok("m0", "m1")
    packs = run.admit_round()
    assert [len(task) for task in packs] == [64, 64]  # 1 ms each: a full pack stays far under the budget
    assert [d.node_id for d in packs[0][1:3]] == ["m999", "m998"]  # the newest ride (admission takes the oldest)
    assert all(run.machine.nodes[d.node_id].state is NodeState.RUNNING for task in packs for d in task)
    assert run.queue.quotas()[0]["cpu_in_use"] == 2.0  # two Ray tasks hold the budget, not 128 nodes
    run.ok(*(d.node_id for d in packs[0][:-1]))
    assert run.queue.quotas()[0]["cpu_in_use"] == 2.0  # the booking passed along the pack
    run.ok(packs[0][-1].node_id)
    assert run.queue.quotas()[0]["cpu_in_use"] == 1.0  # and went back when its last member ended
    tasks, running = 2 + len(packs), [packs[1]]
    while not run.machine.nodes["sink"].state.terminal:
        admitted = run.admit_round()
        tasks += len(admitted)
        running += admitted
        assert running and len(running) <= 2
        if running[0][0].node_id == "sink":
            break
        run.ok(*(d.node_id for d in running.pop(0)))
    assert all(run.machine.nodes[f"m{i}"].state is NodeState.SUCCEEDED for i in range(1000))
    assert all(len(run.machine.nodes[f"m{i}"].attempts) == 1 for i in range(1000))
    assert tasks <= 3 + 1000 / 64 + 3, tasks  # a Ray task per pack, not per node


@pytest.mark.parametrize(("took", "size"), [(0.001, 64), (PACK_BUDGET_S / 4, 4), (PACK_BUDGET_S, 0), (30.0, 0)])
def test_a_pack_of_siblings_runs_at_most_about_the_budget_by_the_longest_run_seen(took: float, size: int) -> None:
    run = Gated(fan(200))
    [[src]] = run.admit_round()
    run.ok(src.node_id)
    first = run.admit_round()
    run.ok(first[0][0].node_id, took=0.001)
    run.ok(first[1][0].node_id, took=took)  # the longest counts: a slow sibling stops big packs for good
    lengths = [len(task) for task in run.admit_round()]
    assert lengths == [max(size, 1)] * 2


def test_only_siblings_with_the_same_code_and_resources_ride_together_and_a_failed_rider_retries_alone() -> None:
    spec = fan(100, slo={"retry": {"max_attempts": 2, "backoff_sec": 30}})
    for i, node in enumerate(spec["nodes"][1:101]):
        if i % 2:
            node["entrypoint"] = "m:g"
        if i % 3 == 0:
            node["resources"] = {"cpu": 2}
    run = Gated(spec, cpus=4)
    [[src]] = run.admit_round()
    run.ok(src.node_id)
    for task in run.admit_round():
        run.ok(*(d.node_id for d in task))
    packs = [task for task in run.admit_round() if len(task) > 1]
    assert packs
    for task in packs:
        nodes = [run.plan.nodes[d.node_id] for d in task]
        assert len({n.entrypoint for n in nodes}) == 1 and all(n.unit == nodes[0].unit for n in nodes)
    rider = packs[0][1].node_id
    in_use = run.queue.quotas()[0]["cpu_in_use"]
    run.ok(packs[0][0].node_id)  # in run order: the head, then the rider fails, then the others
    run.fail(rider)
    run.ok(*(d.node_id for d in packs[0][2:]))
    assert run.queue.quotas()[0]["cpu_in_use"] == in_use - run.plan.nodes[rider].unit.num_cpus  # given back
    assert run.machine.nodes[rider].state is NodeState.RETRYING
    run.now += 60
    run.machine.tick()
    run.queue.on_transitions("s", run.machine.drain_transitions(), run.machine)
    assert rider in run.machine.waiting()
    assert all(run.machine.nodes[d.node_id].state is NodeState.SUCCEEDED for d in packs[0] if d.node_id != rider)
    assert all(len(run.machine.nodes[d.node_id].attempts) == 1 for d in packs[0] if d.node_id != rider)


def test_a_failed_siblings_run_time_counts_too() -> None:
    """A sibling that failed after 2 s says as much about its code's run time as a success would: no packs."""
    run = Gated(fan(100, slo={"retry": {"max_attempts": 2}}))
    [[src]] = run.admit_round()
    run.ok(src.node_id)
    first = run.admit_round()
    run.ok(first[0][0].node_id, took=0.001)
    node = first[1][0].node_id
    from fabric.types import ErrorInfo

    run.machine.on_result(node, run.tokens[node], AttemptReport(started_at=run.now, ended_at=run.now + 2.0),
                          ErrorInfo("ValueError", "slow, then wrong"))
    run.queue.on_transitions("s", run.machine.drain_transitions(), run.machine)
    assert [len(task) for task in run.admit_round()] == [1, 1]


def test_a_packs_booking_never_passes_to_a_member_that_failed_and_waits_for_its_retry() -> None:
    """Out of run order (a rider's failure recorded before its head's end): the booking skips the rider that waits
    for its retry, and goes back when the last running member ends; the retry is admitted on its own."""
    run = Gated(fan(100, slo={"retry": {"max_attempts": 2, "backoff_sec": 30}}))
    [[src]] = run.admit_round()
    run.ok(src.node_id)
    for task in run.admit_round():
        run.ok(*(d.node_id for d in task))
    pack, *_ = run.admit_round()
    assert len(pack) > 2 and run.queue.quotas()[0]["cpu_in_use"] == 2.0
    run.fail(pack[1].node_id)
    run.ok(pack[0].node_id)
    for member in pack[2:]:
        run.ok(member.node_id)
    assert run.queue.quotas()[0]["cpu_in_use"] == 1.0  # the other pack's booking only
