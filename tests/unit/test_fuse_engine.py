"""A fused chain through the real Engine loop without Ray: a backend that runs each task (a node, or a fused
chain's body, `execute/chain.run_chain`) on a thread of its own, with futures for refs. A member that fails
twice retries on its own, with its backoff, and the members before it never run again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from fabric.execute.chain import ChainCall, run_chain
from fabric.execute.engine import Engine
from fabric.execute.ports import AttemptHandle, Outcome
from fabric.execute.untrusted import encode_chain_items
from fabric.execute.worker import NodeFailure, NotRun, attempt_node
from fabric.plan import compile_plan
from fabric.record import MemoryStore, SubmissionRecord
from fabric.record.cache import MemoryCacheIndex
from fabric.record.metrics import FabricMetrics
from fabric.spec import load_spec
from fabric.states import NodeState, SubmissionState

pytestmark = pytest.mark.timeout(60)


def _value(ref: Any) -> Any:
    return ref.result(timeout=30) if isinstance(ref, Future) else ref


class ThreadBackend:
    """Each task on its own thread; its values are futures, which the tasks wired to them wait on (as Ray's
    tasks wait on their ObjectRef arguments)."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.tasks: list[tuple[str, ...]] = []  # the node ids of each task, in submission order

    def submit(self, call: Any, unit: Any, inputs: Sequence[Any], runtime_env: Any, placement: Any,
               on_done: Callable[[Outcome], None]) -> AttemptHandle:
        futures: dict[str, Future[Any]] = {slot: Future() for slot in call.result_slots}
        self.tasks.append((call.node_id,))

        def task() -> None:
            try:
                report, values = attempt_node(call, *[_value(ref) for ref in inputs])
                outcome: Outcome = (report, None)
            except NodeFailure as exc:
                values, outcome = [NotRun(call.node_id, exc.error.message)] * len(futures), (exc.report, exc.error)
            for future, value in zip(futures.values(), values, strict=True):
                future.set_result(value)
            on_done(outcome)
        threading.Thread(target=task, daemon=True).start()
        return AttemptHandle(object(), dict(futures), call.attempt)

    def submit_chain(self, chain: ChainCall, unit: Any, inputs: Sequence[Any], runtime_env: Any, placement: Any,
                     on_done: Callable[[list[Outcome]], None]) -> list[AttemptHandle]:
        futures: list[Future[Any]] = [Future() for _ in range(chain.slots)]
        self.tasks.append(tuple(call.node_id for call in chain.members))
        sid = chain.members[0].submission_id
        engine = self.engine
        assert engine is not None

        def task() -> None:
            outcomes, values = run_chain(chain, [_value(ref) for ref in inputs],
                                         lambda items: engine.chain_report(sid, encode_chain_items(items)))
            for future, value in zip(futures, values, strict=True):
                future.set_result(value)
            on_done(list(outcomes))
        threading.Thread(target=task, daemon=True).start()
        handles, at = [], 0
        report = object()  # one task: one report for every member
        for call in chain.members:
            slots = call.result_slots
            handles.append(AttemptHandle(report, dict(zip(slots, futures[at:at + len(slots)], strict=True)),
                                         call.attempt))
            at += len(slots)
        return handles

    def cancel(self, handle: AttemptHandle, force: bool) -> None:
        pass

    def load(self, root: str, submission_id: str, node_id: str, outs: Sequence[str]) -> dict[str, Any]:
        raise AssertionError("nothing is reloaded in this test")


def test_a_fused_member_that_fails_twice_retries_alone_and_the_members_before_it_run_once(tmp_path: Path) -> None:
    backend = ThreadBackend()
    engine = Engine(MemoryStore(), backend=backend, home=str(tmp_path), artifacts=str(tmp_path / "artifacts"),
                    persist_outputs=False, cache_index=MemoryCacheIndex(), metrics=FabricMetrics())
    backend.engine = engine
    marks = str(tmp_path / "marks")

    def node(node_id: str, fn: str, ins: list[str], **params: Any) -> dict[str, Any]:
        return {"id": node_id, "kind": "python_task", "entrypoint": f"tests.nodes:{fn}", "ins": ins,
                "outs": [node_id], "params": {"marker_dir": marks, **params}}

    doc = {"version": 1, "pipeline_id": "fused", "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "f"},
                                                            {"from": "f", "to": "d"}],
           "nodes": [node("a", "counted", [], name="a"), node("b", "counted", ["x=a"], name="b"),
                     {**node("f", "flaky_step", ["x=b"], failures=2), "slo": {"retry": {"max_attempts": 3,
                                                                                   "backoff_sec": 0.2}}},
                     node("d", "counted", ["x=f"], name="d")]}
    plan = compile_plan(load_spec(doc))
    try:
        engine.start(SubmissionRecord("s1", plan.pipeline_id, doc, {}, plan.plan_hash, "request", 0.0), plan, None)
        assert engine.wait("s1", 30)
        status = engine.status("s1")
        assert status.state is SubmissionState.SUCCEEDED, [(n.node_id, n.state, n.error) for n in status.nodes]
        assert [(n.node_id, n.state, n.attempts) for n in status.nodes] == [
            ("a", NodeState.SUCCEEDED, 1), ("b", NodeState.SUCCEEDED, 1), ("f", NodeState.SUCCEEDED, 3),
            ("d", NodeState.SUCCEEDED, 1)]
        # one task for the whole chain, then the chain from f on for each retry: a and b never again
        assert backend.tasks == [("a", "b", "f", "d"), ("f", "d"), ("f", "d")]
        counts = {name: len(list(Path(marks).glob(f"{name}.*"))) for name in ("a", "b", "flaky", "d")}
        assert counts == {"a": 1, "b": 1, "flaky": 3, "d": 1}  # executions, as the files the nodes wrote say
        f = status.node("f")
        assert [h.outcome for h in f.history] == ["RETRYING", "RETRYING", "SUCCEEDED"]
        assert f.history[1].started_at - f.history[0].ended_at >= 0.2  # its own backoff
        assert engine.result_ref("s1", "d", None).result(timeout=5) == "d(ok after 3)"
    finally:
        engine.shutdown()
