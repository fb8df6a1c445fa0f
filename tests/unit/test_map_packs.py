"""Map children packed into shared Ray tasks (execute/fusion.py map_packs, chain.py `independent`): which children
share a task, and that inside one a failure stops no sibling (each keeps its own attempt, error and log)."""

from __future__ import annotations

from typing import Any

import pytest

from fabric.execute.chain import EXTERNAL, ChainCall, run_chain
from fabric.execute.fusion import MAX_PACK, PACK_SPREAD, map_packs
from fabric.types import AttemptReport
from tests.unit.test_fuse import call
from tests.unit.test_map_machine import Run

pytestmark = pytest.mark.timeout(30)


def test_a_large_map_goes_as_packs_of_consecutive_children_each_child_in_one_pack() -> None:
    run = Run({})
    actions = run.expand(100)
    packs = map_packs(run.plan, actions)
    size = 100 // PACK_SPREAD
    assert packs and all(len(pack) == size for pack in packs.values())
    packed = [d.node_id for pack in packs.values() for d in pack]
    assert len(packed) == len(set(packed)) == 100 - 100 % size
    for head, pack in packs.items():
        first = int(head[2:-1])
        assert [d.node_id for d in pack] == [f"m[{i}]" for i in range(first, first + size)]


def test_small_maps_and_children_that_need_a_task_of_their_own_are_not_packed() -> None:
    small = Run({})
    assert map_packs(small.plan, small.expand(PACK_SPREAD)) == {}  # it would make packs of one
    timed = Run({}, slo={"max_runtime": "30s"})  # a child's deadline kills its Ray task: it has one of its own
    assert map_packs(timed.plan, timed.expand(500)) == {}
    big = Run({})
    assert max(len(p) for p in map_packs(big.plan, big.expand(PACK_SPREAD * MAX_PACK * 2)).values()) == MAX_PACK
    long = Run({}, fuse=False)  # long children on a large cluster: one Ray task each, all in parallel
    assert map_packs(long.plan, long.expand(500)) == {}


def test_in_a_pack_a_failed_child_stops_no_sibling_and_keeps_its_own_error_and_log(tmp_path: Any) -> None:
    home = str(tmp_path)
    pack = ChainCall(
        (call("m[0]", "tests.unit.test_fuse:plus_one", home, "x"), call("m[1]", "tests.unit.test_fuse:boom", home, "x"),
         call("m[2]", "tests.unit.test_fuse:plus_one", home, "x")),
        (((EXTERNAL, 0),), ((EXTERNAL, 1),), ((EXTERNAL, 2),)), independent=True)
    outcomes, values = run_chain(pack, [1, 2, 3])
    assert values[0] == 2 and values[2] == 4
    assert outcomes[0][1] is None and outcomes[2][1] is None
    error = outcomes[1][1]
    assert error is not None and error.type == "ValueError" and outcomes[1][0].log_tail == "about to fail\n"


def test_with_admission_an_admitted_child_takes_waiting_siblings_into_its_task_on_its_one_booking() -> None:
    """Gated: each admission of a map child dispatches a pack (the child, then the newest waiting siblings), which
    the dispatcher sends as one Ray task; the pack holds one booking until its last child ends, so the team's
    CPU budget counts Ray tasks running, not children, and the map needs a task per pack, not per item."""
    from fabric.plan import compile_plan
    from fabric.schedule.actions import Dispatch
    from fabric.schedule.admission import Node
    from fabric.schedule.queue import AdmissionQueue, SchedulingConfig
    from fabric.schedule.quota import Budget
    from fabric.schedule.run import RunMachine
    from fabric.spec import load_spec
    from fabric.states import NodeState
    from fabric.types import AttemptReport
    from tests.unit.test_map_machine import _spec

    now = [1_764_000_000.0]
    plan = compile_plan(load_spec(_spec({})))
    machine = RunMachine(plan, lambda: now[0], submission_id="s", gated=True)
    queue = AdmissionQueue(SchedulingConfig(quotas={"research": Budget(cpu=2)}), lambda: now[0],
                           nodes=lambda: [Node("n", 8.0, [])])
    tokens: dict[str, int] = {}

    def admit_round() -> list[list[Dispatch]]:
        packs = []
        for _, node_id, _ in queue.admit([("s", machine, "research")]):
            dispatched = [a for a in machine.admit(node_id) if isinstance(a, Dispatch)]
            tokens.update({d.node_id: d.token for d in dispatched})
            packs.append(dispatched)
        queue.on_transitions("s", machine.drain_transitions(), machine)
        return packs

    def ok(*nodes: str) -> None:
        for node in nodes:
            machine.on_result(node, tokens[node], AttemptReport())
        queue.on_transitions("s", machine.drain_transitions(), machine)

    machine.start()
    [[a]] = admit_round()
    ok(a.node_id)
    [[split]] = admit_round()
    machine.expand("m", split.token, [f"h{i}" for i in range(1000)])
    queue.release("s/m")  # as the engine does when a map's count task ends (execute/engine.py `_split_done`)
    first = admit_round()
    now[0] += 1
    first += admit_round()  # a round may admit one new waiting node at a time
    assert len(first) == 2 and first[0][0].node_id == "m[0]"  # admission takes the oldest (ties by key)
    assert not {d.node_id for d in first[0]} & {d.node_id for d in first[1]}
    assert [len(pack) for pack in first] == [31, 31]  # 1000 // PACK_SPREAD: the newest waiting ride along
    assert [d.node_id for d in first[0][1:3]] == ["m[999]", "m[998]"]
    for pack in first:
        assert list(map_packs(plan, pack, spread=1).values()) == [pack]  # one Ray task each
        assert all(machine.nodes[d.node_id].state is NodeState.RUNNING for d in pack)
    assert queue.quotas()[0]["cpu_in_use"] == 2.0 and admit_round() == []  # two tasks hold the budget
    ok(*(d.node_id for d in first[0]))
    assert queue.quotas()[0]["cpu_in_use"] == 1.0  # the pack's booking went back when its last child ended
    tasks, running = len(first), [first[1]]
    while not machine.nodes["m"].state.terminal:
        now[0] += 1
        admitted = admit_round()
        tasks += len(admitted)
        running += admitted
        assert running and queue.quotas()[0]["cpu_in_use"] == len(running) <= 2
        ok(*(d.node_id for d in running.pop(0)))
    assert machine.nodes["m"].state is NodeState.SUCCEEDED
    assert all(machine.nodes[f"m[{i}]"].state is NodeState.SUCCEEDED for i in range(1000))
    assert all(len(machine.nodes[f"m[{i}]"].attempts) == 1 for i in range(1000))
    assert tasks <= 1000 / 31 + 2, tasks  # Ray tasks for 1,000 children, as with eager dispatch
    assert queue.quotas()[0]["cpu_in_use"] == 0.0


def test_with_admission_a_map_with_a_small_max_parallel_is_not_packed() -> None:
    """max_parallel caps the children running at once; a pack would run them one after another in one task."""
    from fabric.plan import compile_plan
    from fabric.schedule.actions import Dispatch
    from fabric.schedule.run import RunMachine
    from fabric.spec import load_spec
    from tests.unit.test_map_machine import _spec

    machine = RunMachine(compile_plan(load_spec(_spec({"max_parallel": 8}))), lambda: 0.0, submission_id="s",
                         gated=True)
    machine.start()
    [a] = machine.admit("a")
    machine.on_result("a", a.token, AttemptReport())
    [split] = [x for x in machine.admit("m") if isinstance(x, Dispatch)]
    machine.expand("m", split.token, [f"h{i}" for i in range(1000)])
    assert machine.waiting() == [f"m[{i}]" for i in range(8)]
    assert [d.node_id for d in machine.admit("m[0]") if isinstance(d, Dispatch)] == ["m[0]"]
