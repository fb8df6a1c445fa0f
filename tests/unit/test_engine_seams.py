"""The real Engine loop driven through its seams, without Ray: a fake backend (the `ports.Backend` protocol)
that holds every attempt until the test ends it, an injected clock, and a real MemoryStore. Proves how each
kind of Kill reaches the backend: timeouts (the node's and the DAG's) are forced at once; a cancel is
cooperative first and forced only after the grace period."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from fabric.execute.engine import CANCEL_GRACE_S, Engine
from fabric.execute.ports import AttemptHandle, Outcome
from fabric.plan import compile_plan
from fabric.record import MemoryStore, SubmissionRecord
from fabric.record.cache import MemoryCacheIndex
from fabric.record.metrics import FabricMetrics
from fabric.spec import load_spec
from fabric.states import NodeState, SubmissionState
from fabric.types import AttemptReport

pytestmark = pytest.mark.timeout(60)


class FakeBackend:
    """Records what the engine asks; an attempt ends only when the test calls `finish`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.submitted: list[tuple[str, int, list[Any], Callable[[Outcome], None]]] = []  # node, attempt, inputs
        self.cancelled: list[tuple[str, bool]] = []  # (node, force)
        self._node_of: dict[int, str] = {}

    def submit(self, call: Any, unit: Any, inputs: Sequence[Any], runtime_env: dict[str, Any] | None,
               placement: Any, on_done: Callable[[Outcome], None]) -> AttemptHandle:
        handle = AttemptHandle(f"report:{call.node_id}:{call.attempt}",
                               {slot: f"{call.node_id}.{slot}#{call.attempt}" for slot in call.result_slots},
                               call.attempt)
        with self.lock:
            self.submitted.append((call.node_id, call.attempt, list(inputs), on_done))
            self._node_of[id(handle)] = call.node_id
        return handle

    def cancel(self, handle: AttemptHandle, force: bool) -> None:
        with self.lock:
            self.cancelled.append((self._node_of[id(handle)], force))

    def load(self, root: str, submission_id: str, node_id: str, outs: Sequence[str]) -> dict[str, Any]:
        return {out: f"loaded:{node_id}.{out}" for out in outs}

    def finish(self, node_id: str) -> None:
        """The node's latest attempt succeeds (the callback comes from this thread, as Ray's from its own)."""
        with self.lock:
            on_done = next(done for node, _, _, done in reversed(self.submitted) if node == node_id)
        on_done((AttemptReport(started_at=1.0, ended_at=2.0), None))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def engine(tmp_path):
    backend, clock = FakeBackend(), Clock()
    engine = Engine(MemoryStore(), backend=backend, home=str(tmp_path), artifacts=str(tmp_path / "artifacts"),
                    clock=clock, persist_outputs=False, cache_index=MemoryCacheIndex(), metrics=FabricMetrics())
    yield engine, backend, clock
    engine.shutdown()


def submit(engine: Engine, doc: dict[str, Any], sid: str = "s1") -> None:
    spec = load_spec(doc)
    plan = compile_plan(spec)
    engine.start(SubmissionRecord(sid, plan.pipeline_id, doc, {}, plan.plan_hash, "request", 0.0), plan, None)


def chain(dag_slo: dict[str, Any] | None = None, node_slo: dict[str, Any] | None = None) -> dict[str, Any]:
    a = {"id": "a", "kind": "python_task", "entrypoint": "m:a", "outs": ["x"],
         **({"slo": node_slo} if node_slo else {})}
    b = {"id": "b", "kind": "python_task", "entrypoint": "m:b", "ins": ["x"]}
    return {"version": 1, "pipeline_id": "p", "nodes": [a, b], "edges": [{"from": "a", "to": "b"}],
            **({"slo": dag_slo} if dag_slo else {})}


def test_a_chain_runs_through_the_fake_backend_with_eager_wiring(engine):
    engine, backend, _ = engine
    submit(engine, chain())
    wait_for(lambda: len(backend.submitted) == 2, "a and its eager child b")
    (a, _, a_inputs, _), (b, _, b_inputs, _) = backend.submitted
    assert (a, b, a_inputs) == ("a", "b", [])
    assert b_inputs == ["a.x#1"]  # b is wired to a's future output, not to a value through the engine
    assert engine.status("s1").node("b").state is NodeState.PENDING  # dispatched, not RUNNING before a ends
    backend.finish("a")
    wait_for(lambda: engine.status("s1").node("b").state is NodeState.RUNNING, "b released once a succeeded")
    backend.finish("b")
    assert engine.wait("s1", 10)
    assert engine.status("s1").state is SubmissionState.SUCCEEDED and backend.cancelled == []


def test_a_dag_timeout_forces_every_live_dispatch_at_once(engine):
    engine, backend, clock = engine
    submit(engine, chain(dag_slo={"max_runtime": "10s"}))
    wait_for(lambda: len(backend.submitted) == 2, "both dispatches")
    clock.now += 11  # past the DAG's deadline
    assert engine.wait("s1", 10)
    assert engine.status("s1").state is SubmissionState.TIMED_OUT
    assert sorted(backend.cancelled) == [("a", True), ("b", True)]  # forced, the eager one too


def test_a_node_timeout_is_forced_at_once(engine):
    engine, backend, clock = engine
    submit(engine, chain(node_slo={"max_runtime": "5s"}))
    wait_for(lambda: len(backend.submitted) == 2, "both dispatches")
    clock.now += 6
    assert engine.wait("s1", 10)
    assert engine.status("s1").node("a").state is NodeState.TIMED_OUT
    assert backend.cancelled[0] == ("a", True)


def test_a_cancel_is_cooperative_first_and_forced_after_the_grace(engine):
    engine, backend, clock = engine
    submit(engine, chain())
    wait_for(lambda: len(backend.submitted) == 2, "both dispatches")
    engine.cancel("s1")
    assert engine.wait("s1", 10)
    assert engine.status("s1").state is SubmissionState.CANCELLED
    wait_for(lambda: len(backend.cancelled) == 2, "the cooperative cancels")
    assert sorted(backend.cancelled) == [("a", False), ("b", False)]
    time.sleep(0.6)  # a loop turn or more: the grace has not passed on the engine's clock, nothing is forced
    assert len(backend.cancelled) == 2
    clock.now += CANCEL_GRACE_S + 0.1
    wait_for(lambda: len(backend.cancelled) == 4, "the forced kills after the grace")
    assert sorted(backend.cancelled[2:]) == [("a", True), ("b", True)]
