"""Map children packed into shared Ray tasks (execute/fusion.py map_packs, chain.py `independent`): which children
share a task, and that inside one a failure stops no sibling (each keeps its own attempt, error and log)."""

from __future__ import annotations

from typing import Any

import pytest

from fabric.execute.chain import EXTERNAL, ChainCall, run_chain
from fabric.execute.fusion import MAX_PACK, PACK_SPREAD, map_packs
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
