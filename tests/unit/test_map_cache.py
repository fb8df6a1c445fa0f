"""`cache: true` on a map node: each child is a cache node keyed by its item's content, the map node's other inputs'
digests and the code version, per team; hits are CACHED, misses run (and may be packed). No Ray: a fake engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import fabric as fb
from fabric.execute.cache import NodeCache
from fabric.execute.fusion import map_packs
from fabric.execute.outputs import MANIFEST, outputs_dir
from fabric.plan import ExecutionPlan, compile_plan
from fabric.plan.fuse import packable
from fabric.record.cache import MemoryCacheIndex
from fabric.schedule.actions import Action, Dispatch, Gather
from fabric.schedule.run import RunMachine
from fabric.spec import load_spec
from fabric.states import NodeState
from fabric.types import AttemptReport
from tests import nodes

pytestmark = pytest.mark.timeout(30)

N = NodeState


def _spec(cache: bool | str = True, fan: dict[str, Any] | None = None,
          a_params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"version": 1, "pipeline_id": "p", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:a", "outs": ["xs", "k"], "params": a_params or {}},
        {"id": "m", "kind": "python_task", "entrypoint": "m:f", "ins": ["x=xs", "k"], "outs": ["y"], "cache": cache,
         "map": {"over": "x", **(fan or {})}},
        {"id": "r", "kind": "python_task", "entrypoint": "m:r", "ins": ["ys=y"]}]}


def _plan(cache: bool | str = True, fan: dict[str, Any] | None = None,
          a_params: dict[str, Any] | None = None) -> ExecutionPlan:
    return compile_plan(load_spec(_spec(cache, fan, a_params)))


# -- spec and plan -------------------------------------------------------------------------------------------

def test_a_map_node_may_be_cached_its_children_are_cache_nodes_keyed_by_their_items() -> None:
    plan = _plan()
    m = plan.nodes["m"]
    assert m.map is not None and m.map.cache and not m.cache  # the map node itself is never held for a check
    assert plan.nodes["a"].digest_outputs  # the map's other input `k` is part of each child's key
    machine = RunMachine(plan, time.time, submission_id="s")
    machine.start()
    machine.on_result("a", machine.nodes["a"].token or 0, AttemptReport())
    machine.expand("m", machine.nodes["m"].token or 0, ["h0", "h1", "h0"])
    children = [plan.nodes[f"m[{i}]"] for i in range(3)]
    assert all(c.cache and not c.cache_shared for c in children)
    assert [c.item_digest for c in children] == ["h0", "h1", "h0"]
    uncached = _plan(False)
    assert uncached.nodes["m"].map is not None and not uncached.nodes["m"].map.cache
    assert not uncached.nodes["a"].digest_outputs
    shared = _plan("shared")
    assert shared.nodes["m"].map is not None and shared.nodes["m"].map.cache_shared


def test_a_batch_is_keyed_as_a_batch_never_as_the_single_item_with_that_hash() -> None:
    plan = _plan(True, {"batch_size": 2})
    machine = RunMachine(plan, time.time, submission_id="s")
    machine.start()
    machine.on_result("a", machine.nodes["a"].token or 0, AttemptReport())
    machine.expand("m", machine.nodes["m"].token or 0, ["h0", "h1", "h2"])
    first, last = plan.nodes["m[0]"].item_digest, plan.nodes["m[1]"].item_digest
    assert first is not None and last is not None and len({first, last, "h2", "h0,h1"}) == 4


def test_the_builder_and_the_spec_accept_cache_on_a_map() -> None:
    add = fb.task(nodes.add, cache=True)
    with fb.DAG("built") as dag:
        add.map(fb.task(nodes.make_table, outs=["table"])(rows=3), b=1.0)
    mapped = dag.to_spec().node("add")
    assert mapped.map is not None and mapped.cache is True
    assert load_spec(_spec()).node("m").cache is True  # no SPEC_FIELD at nodes[1].cache any more


# -- the machine -----------------------------------------------------------------------------------------------

def _expanded(items: int, gated: bool = False, fan: dict[str, Any] | None = None) -> tuple[RunMachine, list[Action]]:
    machine = RunMachine(_plan(True, fan), time.time, submission_id="s", gated=gated)
    machine.start()
    if gated:
        machine.admit("a")
    machine.on_result("a", machine.nodes["a"].token or 0, AttemptReport())
    if gated:
        machine.admit("m")
    return machine, machine.expand("m", machine.nodes["m"].token or 0, [f"h{i}" for i in range(items)])


def test_cached_children_wait_for_their_check_and_hits_end_the_map_with_a_gather() -> None:
    machine, actions = _expanded(3)
    assert [a for a in actions if isinstance(a, Dispatch)] == []  # never dispatched before the check
    assert machine.ready_cached() == ["m[0]", "m[1]", "m[2]"]
    assert {machine.nodes[c].state for c in machine.ready_cached()} == {N.QUEUED}
    assert machine.cache_hit("m[0]", "cached: reuses m[0] of s0") == []
    assert machine.nodes["m[0]"].state is N.CACHED and machine.nodes["m"].progress == pytest.approx(1 / 3)
    assert [a.node_id for a in machine.admit("m[1]")] == ["m[1]"]  # a miss runs
    actions = machine.cache_hit("m[2]", "cached: reuses m[2] of s0")
    assert actions == [] and machine.ready_cached() == []
    machine.on_result("m[1]", machine.nodes["m[1]"].token or 0, AttemptReport())
    assert machine.nodes["m"].state is N.SUCCEEDED
    gathered = [a for a in machine.drain_transitions() if a.node_id == "m"]
    assert gathered[-1].target is N.SUCCEEDED


def test_the_last_hit_gathers_the_map_in_item_order() -> None:
    machine, _ = _expanded(2)
    machine.admit("m[0]")
    machine.on_result("m[0]", machine.nodes["m[0]"].token or 0, AttemptReport())
    actions = machine.cache_hit("m[1]", "cached")
    gathers = [a for a in actions if isinstance(a, Gather)]
    assert len(gathers) == 1 and [c for c, _ in gathers[0].children] == ["m[0]", "m[1]"]
    assert [a.node_id for a in actions if isinstance(a, Dispatch)] == ["r"]


def test_max_parallel_releases_the_next_child_when_one_hits() -> None:
    machine, _ = _expanded(4, fan={"max_parallel": 2})
    assert machine.ready_cached() == ["m[0]", "m[1]"]
    machine.cache_hit("m[0]", "cached")
    assert machine.ready_cached() == ["m[1]", "m[2]"]


def test_gated_misses_leave_the_check_and_are_packed_on_one_admission_but_never_before_their_check() -> None:
    machine, _ = _expanded(200, gated=True)
    assert machine.waiting() == []  # all held: admission sees none before its check
    for i in range(100):  # the cache decided: these miss
        machine.unhold(f"m[{i}]")
    assert len(machine.ready_cached()) == 100  # decided ones are not asked again every loop
    assert len(machine.waiting()) == 100
    actions = machine.admit("m[0]")
    dispatched = [a.node_id for a in actions if isinstance(a, Dispatch)]
    assert len(dispatched) > 1 and all(int(n[2:-1]) < 100 for n in dispatched)  # riders: checked ones only
    assert all(machine.nodes[n].state is N.RUNNING for n in dispatched)
    assert not set(dispatched) & set(machine.ready_cached())


def test_misses_dispatched_together_go_as_packs() -> None:
    machine, _ = _expanded(200)
    assert packable(machine.plan.nodes["m[0]"])
    actions = [a for i in range(200) for a in machine.admit(f"m[{i}]")]
    packs = map_packs(machine.plan, actions)
    assert packs and sum(len(p) for p in packs.values()) == 200


# -- the cache, on a fake engine ---------------------------------------------------------------------------------

@dataclass
class FakeRun:
    submission_id: str
    plan: ExecutionPlan
    machine: RunMachine
    team: str | None = None
    runtime_env: dict[str, Any] | None = None
    code: dict[str, Any] = field(default_factory=dict)


class FakeEngine:
    """The CacheHost seam: performs dispatches by recording them (each `perform` call is one batch)."""

    def __init__(self) -> None:
        self.runs: dict[str, FakeRun] = {}
        self.batches: list[list[str]] = []
        self.adopted: dict[tuple[str, str], dict[str, Any]] = {}

    def live_runs(self) -> Iterator[FakeRun]:
        return iter(list(self.runs.values()))

    def run_of(self, submission_id: str) -> FakeRun | None:
        return self.runs.get(submission_id)

    def perform(self, submission_id: str, actions: list[Action]) -> None:
        self.batches.append([a.node_id for a in actions if isinstance(a, Dispatch)])

    def adopt_outputs(self, submission_id: str, node_id: str, token: int, values: dict[str, Any]) -> None:
        self.adopted[(submission_id, node_id)] = values

    def load_outputs(self, submission_id: str, node_id: str, outs: Any) -> dict[str, Any]:
        return {o: f"{submission_id}/{node_id}/{o}" for o in outs}

    def wake(self, submission_id: str) -> None:
        pass


class NoRay:
    def remote(self, *args: Any) -> None:  # the copy of a hit's files: a Ray task, not wanted here
        pass


VERSIONS = {"entry:m:f": "v1", "kind:python_task": "k1"}


def _submit(engine: FakeEngine, cache: NodeCache, sid: str, items: list[str], k: str = "dk",
            team: str | None = None, fan: dict[str, Any] | None = None,
            a_params: dict[str, Any] | None = None) -> RunMachine:
    plan = _plan(True, fan, a_params)
    machine = RunMachine(plan, time.time, submission_id=sid)
    engine.runs[sid] = FakeRun(sid, plan, machine, team)
    cache._versions[sid] = dict(VERSIONS)  # as the code-version probe answers (a Ray task)
    machine.start()
    machine.on_result("a", machine.nodes["a"].token or 0, AttemptReport(digests={"k": k}))
    machine.expand("m", machine.nodes["m"].token or 0, items)
    return machine


def _finish(engine: FakeEngine, cache: NodeCache, machine: RunMachine, artifacts: Path) -> list[str]:
    """Every dispatched child succeeds and writes its outputs; returns the children that ran."""
    ran = [n for n in machine.nodes if n.startswith("m[") and machine.nodes[n].state is N.RUNNING]
    for node_id in ran:
        manifest = Path(outputs_dir(str(artifacts), machine.submission_id, node_id)) / MANIFEST
        manifest.parent.mkdir(parents=True)
        manifest.write_bytes(b"")
        machine.on_result(node_id, machine.nodes[node_id].token or 0, AttemptReport())
    cache.tick(engine)  # records the entries of the children that succeeded
    return ran


@pytest.fixture
def setup(tmp_path: Path) -> tuple[FakeEngine, NodeCache, Path]:
    cache = NodeCache(str(tmp_path), str(tmp_path), MemoryCacheIndex())
    cache._copy = NoRay()
    return FakeEngine(), cache, tmp_path


def test_a_second_run_with_three_changed_items_runs_only_those_three(setup) -> None:
    engine, cache, artifacts = setup
    items = [f"h{i}" for i in range(12)]
    first = _submit(engine, cache, "s1", items)
    cache.tick(engine)
    assert engine.batches == [[f"m[{i}]" for i in range(12)]]  # every miss in one batch: packable together
    assert len(_finish(engine, cache, first, artifacts)) == 12
    assert first.nodes["m"].state is N.SUCCEEDED and cache.hits == 0

    changed = [*items[:3], "new3", *items[4:8], "new8", *items[9:11], "new11"]
    second = _submit(engine, cache, "s2", changed)
    cache.tick(engine)
    assert engine.batches[-1] == ["m[3]", "m[8]", "m[11]"]
    cached = {n for n in second.nodes if second.nodes[n].state is N.CACHED}
    assert cached == {f"m[{i}]" for i in (0, 1, 2, 4, 5, 6, 7, 9, 10)} and cache.hits == 9
    assert second.nodes["m[4]"].reason == "cached: reuses m[4] of s1"
    assert engine.adopted[("s2", "m[4]")] == {"y": "s1/m[4]/y"}
    assert _finish(engine, cache, second, artifacts) == ["m[3]", "m[8]", "m[11]"]
    assert second.nodes["m"].state is N.SUCCEEDED

    other_k = _submit(engine, cache, "s3", items, k="other")  # the map's other input changed: every child misses
    cache.tick(engine)
    assert len(engine.batches[-1]) == 12 and cache.hits == 9
    assert {other_k.nodes[f"m[{i}]"].state for i in range(12)} == {N.RUNNING}


def test_another_team_never_reuses_a_teams_children_and_max_parallel_hits_go_in_one_tick(setup) -> None:
    engine, cache, artifacts = setup
    items = [f"h{i}" for i in range(6)]
    first = _submit(engine, cache, "a1", items, team="a")
    cache.tick(engine)
    _finish(engine, cache, first, artifacts)
    other = _submit(engine, cache, "b1", items, team="b")
    cache.tick(engine)
    assert engine.batches[-1] == [f"m[{i}]" for i in range(6)] and cache.hits == 0
    again = _submit(engine, cache, "a2", items, team="a", fan={"max_parallel": 2})
    cache.tick(engine)  # each hit releases the next child under max_parallel: all decided in this one tick
    assert {again.nodes[f"m[{i}]"].state for i in range(6)} == {N.CACHED} and cache.hits == 6
    assert again.nodes["m"].state is N.SUCCEEDED
    assert other.nodes["m[0]"].state is N.RUNNING


def test_identical_items_of_one_map_run_once(setup) -> None:
    engine, cache, artifacts = setup
    machine = _submit(engine, cache, "s1", ["same", "same", "other"])
    cache.tick(engine)
    assert engine.batches == [["m[0]", "m[2]"]]
    assert machine.nodes["m[1]"].reason.startswith("coalesced")  # waits for m[0]
    _finish(engine, cache, machine, artifacts)
    assert machine.nodes["m[1]"].state is N.CACHED and machine.nodes["m[1]"].reason == "cached: reuses m[0] of s1"
    assert machine.nodes["m"].state is N.SUCCEEDED


def test_the_key_is_the_items_content_not_the_spec_of_what_produced_the_list(setup) -> None:
    engine, cache, artifacts = setup
    first = _submit(engine, cache, "s1", ["h0", "h1"])
    cache.tick(engine)
    _finish(engine, cache, first, artifacts)
    # Tonight's list comes from a node with other params (another date): its unchanged items still hit.
    second = _submit(engine, cache, "s2", ["h0", "h1"], a_params={"date": "tomorrow"})
    assert second.plan.nodes["m[0]"].content_hash != first.plan.nodes["m[0]"].content_hash
    cache.tick(engine)
    assert {second.nodes[c].state for c in ("m[0]", "m[1]")} == {N.CACHED}
