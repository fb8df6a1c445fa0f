"""A re-run that a registry restart interrupts keeps its reused nodes reused: the restarted engine restores them
CACHED and loads their outputs from the submission that made them, and runs only what was not done."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fabric.execute.engine import Engine
from fabric.execute.outputs import MANIFEST, outputs_dir
from fabric.execute.resume import REUSED
from fabric.plan import compile_plan
from fabric.record import MemoryStore, SubmissionRecord
from fabric.record.cache import MemoryCacheIndex
from fabric.record.metrics import FabricMetrics
from fabric.record.replay import status_from_events
from fabric.spec import load_spec
from fabric.states import NodeState, SubmissionState
from tests.unit.test_engine_seams import Clock, FakeBackend, wait_for

pytestmark = pytest.mark.timeout(60)

DOC: dict[str, Any] = {"version": 1, "pipeline_id": "factors", "nodes": [
    {"id": "make_data", "kind": "python_task", "entrypoint": "m:a", "outs": ["raw"]},
    {"id": "features", "kind": "python_task", "entrypoint": "m:b", "ins": ["raw"], "outs": ["table"]},
    {"id": "fit", "kind": "python_task", "entrypoint": "m:c", "ins": ["table"], "outs": ["model"]},
    {"id": "report", "kind": "python_task", "entrypoint": "m:d", "ins": ["model"]}]}


class LoadingBackend(FakeBackend):
    """Also records which submission's outputs each load reads."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, str]] = []

    def load(self, root: str, submission_id: str, node_id: str, outs: Sequence[str]) -> dict[str, Any]:
        self.loads.append((submission_id, node_id))
        return {out: f"loaded:{submission_id}/{node_id}.{out}" for out in outs}


def _engine(store: MemoryStore, backend: FakeBackend, tmp_path: Path) -> Engine:
    return Engine(store, backend=backend, home=str(tmp_path), artifacts=str(tmp_path / "artifacts"), clock=Clock(),
                  persist_outputs=True, cache_index=MemoryCacheIndex(), metrics=FabricMetrics())


def _stored(tmp_path: Path, submission_id: str, node_id: str) -> None:
    """The manifest a successful attempt writes last (fabric/execute/outputs.py)."""
    folder = Path(outputs_dir(str(tmp_path / "artifacts"), submission_id, node_id))
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_bytes(b"manifest")


def test_a_rerun_interrupted_by_a_restart_recomputes_nothing_it_reused(tmp_path: Path) -> None:
    for node in ("make_data", "features"):
        _stored(tmp_path, "old", node)  # the failed run's succeeded nodes, persisted there
    plan = compile_plan(load_spec(DOC))
    record = SubmissionRecord("rr", "factors", DOC, {}, plan.plan_hash, "r", 0.0,
                              labels={"fabric.rerun_of": "old"})
    store = MemoryStore()
    first = LoadingBackend()
    engine = _engine(store, first, tmp_path)
    try:
        engine.start_rerun(record, plan, {"make_data": "old", "features": "old"}, None)
        wait_for(lambda: engine.status("rr").node("fit").state is NodeState.RUNNING, "fit running")
        assert sorted(first.loads) == [("old", "features"), ("old", "make_data")]
    finally:
        engine.shutdown()  # the registry dies while fit runs

    second = LoadingBackend()
    restarted = _engine(store, second, tmp_path)
    try:
        status = status_from_events(record, store.events("rr"))
        assert {n.node_id: n.state for n in status.nodes}["features"] is NodeState.CACHED
        rerun = restarted.resume(record, plan, status)
        assert rerun == []  # nothing reused must run again
        wait_for(lambda: any(node == "fit" for node, *_ in second.submitted), "fit dispatched again")
        # Only the reused outputs are loaded, from the run that made them; no reused node goes to the backend.
        assert sorted(second.loads) == [("old", "features"), ("old", "make_data")]
        assert {node for node, *_ in second.submitted} == {"fit", "report"}
        fit_inputs = next(inputs for node, _, inputs, _ in second.submitted if node == "fit")
        assert fit_inputs == ["loaded:old/features.table"]
        second.finish("fit")
        wait_for(lambda: restarted.status("rr").node("report").state is NodeState.RUNNING, "report running")
        second.finish("report")
        assert restarted.wait("rr", 10)
        done = restarted.status("rr")
        assert done.state is SubmissionState.SUCCEEDED
        assert done.node("features").state is NodeState.CACHED
        assert done.node("features").reason == REUSED.format(source="old")
    finally:
        restarted.shutdown()
