"""The Ray side of map nodes: count and hash the items (off the head), split them into one object per child, and
gather the children's outputs in item order. The registry never opens an item: it sees counts and hashes only.

A map node's own dispatch is its count task, which first decides its `when` (false: the node is SKIPPED and
never expands); its completion carries the items' hashes in the report's `digests` (plain strings), and the
engine then splits and expands (schedule/mapping.py). Its `Gather` becomes one small task whose outputs are the
map node's outs."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import ray

from fabric.digests import value_digest
from fabric.execute.backend import off_head, outcome
from fabric.execute.conditions import Condition, Skipped, decide
from fabric.execute.dispatcher import input_ref
from fabric.execute.live import LiveRun
from fabric.execute.ports import AttemptHandle, Backend, Done, Message
from fabric.execute.untrusted import encode_report
from fabric.execute.worker import NodeFailure
from fabric.plan.expand import batches, item_slot
from fabric.schedule.actions import Action, Dispatch, Gather
from fabric.spec.conditions import WHEN_INPUT
from fabric.spec.expr import ConditionError
from fabric.spec.mapping import MAX_MAP_ITEMS
from fabric.types import AttemptReport, ErrorInfo, MapResults

REUSED_FROM = re.compile(r"^reused: the outputs of (\S+) ")  # execute/resume.py's REUSED
COUNT_KEY = "n"  # the report's digests: {"n": count, "0": hash of item 0, ...}


def _items(node_id: str, over: str, value: Any) -> list[Any]:
    """The items of a map's input: a list or tuple as is, a table's rows as dicts; anything else fails the map."""
    if isinstance(value, list | tuple):
        return list(value)
    kind = type(value)
    if kind.__module__.startswith(("pyarrow", "polars")) and hasattr(value, "to_pylist" if kind.__module__.startswith(
            "pyarrow") else "to_dicts"):
        return value.to_pylist() if kind.__module__.startswith("pyarrow") else value.to_dicts()
    raise ValueError(f"map node {node_id!r} fans out over input {over!r}, which is a {kind.__name__}, not a list "
                     "or a table")


def count_items(node_id: str, attempt: int, over: str, value: Any, *when_values: Any,
                condition: Condition | None = None, when_names: tuple[str, ...] = ()) -> bytes:
    """The count task: how many items, and each one's content hash (a child's cache key is its item's). A map node
    decides its `condition` here first, as an ordinary node does in its worker (execute/conditions.py), its values
    `when_values` coming as inputs `when_names`: a false one or a skipped input (under `on_skipped: skip`) reports
    the node skipped, and it never expands."""
    started = time.time()
    if condition is not None:
        try:
            _, skipped = decide(condition, (over, *when_names), (value, *when_values))
        except ConditionError as exc:  # the same failure as an ordinary node's worker reports
            error = ErrorInfo("ConditionError", f"when {condition.when!r}: {exc}")
            raise NodeFailure(node_id, attempt, error, AttemptReport(started_at=started,
                                                                     ended_at=time.time())) from None
        if skipped:
            return encode_report(AttemptReport(started_at=started, ended_at=time.time(), skipped=skipped))
    try:
        # `on_skipped: run` (or no condition given) with the list's producer SKIPPED: a map without items
        if isinstance(value, Skipped):
            raise ValueError(f"map node {node_id!r} fans out over input {over!r}, whose producer {value.node_id!r} "
                             "was SKIPPED: there are no items")
        items = _items(node_id, over, value)
        if len(items) > MAX_MAP_ITEMS:
            raise ValueError(f"map node {node_id!r}: input {over!r} has {len(items)} items, more than "
                             f"{MAX_MAP_ITEMS}; use batch_size, or fan out over fewer, larger items")
        digests = {COUNT_KEY: str(len(items)), **{str(i): value_digest(item) for i, item in enumerate(items)}}
    except Exception as exc:  # noqa: BLE001 - the value is wrong, not the fabric: the map node fails, saying why
        error = ErrorInfo("MapInputError", str(exc)[:2000])
        raise NodeFailure(node_id, attempt, error, AttemptReport(started_at=started, ended_at=time.time())) from None
    return encode_report(AttemptReport(started_at=started, ended_at=time.time(), message=f"{len(items)} items",
                                       digests=digests))


def split_items(node_id: str, over: str, batch_size: int, value: Any) -> Any:
    """One value per child: its item, or its batch (a list) of items."""
    items = _items(node_id, over, value)
    parts = [items[r.start] if batch_size == 0 else items[r.start:r.stop] for r in batches(len(items), batch_size or 1)]
    return parts[0] if len(parts) == 1 else tuple(parts)


def gather(slots: int, batched: bool, missing: tuple[int, ...], *values: Any) -> Any:
    """The map node's outs from its children's: per out, the values in item order (flattened from batches); a
    table when every value is a table of the same library, else a list that also says which items are missing."""
    per_child = len(values) // slots if slots else 0
    outs = []
    for slot in range(slots):
        column = values[slot * per_child:(slot + 1) * per_child]
        flat = [v for batch in column for v in batch] if batched else list(column)
        outs.append(_joined(flat) or MapResults(flat, missing))
    return outs[0] if slots == 1 else tuple(outs)


def _joined(values: list[Any]) -> Any:
    if not values:
        return None
    module = type(values[0]).__module__
    if not all(type(v) is type(values[0]) for v in values):
        return None
    if module.startswith("pyarrow") and type(values[0]).__name__ == "Table":
        import pyarrow as pa

        return pa.concat_tables(values)
    if module.startswith("polars") and type(values[0]).__name__ == "DataFrame":
        import polars as pl

        return pl.concat(values)
    return None


class MapTasks:
    """The engine's map work: a map node's dispatch becomes its count task, its items are split once counted, and
    its `Gather` becomes one task. Children are dispatched as any node (their item is the map node's `item<i>`)."""

    def __init__(self, backend: Backend, inbox: Any, artifacts: str, persist_outputs: bool,
                 perform: Callable[[LiveRun, list[Action]], None]) -> None:
        self._backend, self._inbox, self._artifacts, self._perform = backend, inbox, artifacts, perform
        self._persist = persist_outputs
        self._remotes: tuple[Any, Any, Any] | None = None  # made on first use: an engine without maps needs no Ray

    @property
    def _tasks(self) -> tuple[Any, Any, Any]:
        if self._remotes is None:
            self._remotes = (ray.remote(count_items), ray.remote(split_items), ray.remote(gather))
        return self._remotes

    def intercept(self, run: LiveRun, actions: Sequence[Action]) -> list[Action]:
        """Do the map work among `actions` (in order: a gather before the dispatches that read it); the rest."""
        rest: list[Action] = []
        for action in actions:
            if isinstance(action, Gather):
                self._gather_outputs(run, action)
            elif isinstance(action, Dispatch) and run.plan.nodes[action.node_id].map is not None:
                self._count_items(run, action)
            else:
                rest.append(action)
        return rest

    def _over_ref(self, run: LiveRun, node_id: str) -> Any:
        node = run.plan.nodes[node_id]
        assert node.map is not None
        wire = next(w for w in node.inputs if w.name == node.map.over)
        return input_ref(run, wire.producer, run.machine.nodes[node_id].input_tokens[wire.producer], wire.out)

    def _count_items(self, run: LiveRun, action: Dispatch) -> None:
        node = run.plan.nodes[action.node_id]
        assert node.map is not None
        when = [w for w in node.inputs if w.name.startswith(WHEN_INPUT)]  # compile's condition wires
        tokens = run.machine.nodes[action.node_id].input_tokens
        ref = self._tasks[0].options(**off_head({"num_cpus": 0, "max_retries": 0})).remote(
            action.node_id, action.attempt, node.map.over, self._over_ref(run, action.node_id),
            *(input_ref(run, w.producer, tokens[w.producer], w.out) for w in when),
            condition=Condition(node.when, node.when_params, node.on_skipped),
            when_names=tuple(w.name for w in when))
        run.handles[(action.node_id, action.token)] = AttemptHandle(ref, {}, action.attempt)
        done = partial(_done, self._inbox, run.record.submission_id, action.node_id, action.token)
        ref._on_completed(lambda result: done(outcome(result)))

    def skipped(self, run: LiveRun, node_id: str, token: int) -> None:
        """Its count task said the map node is skipped: each out reads as a SKIPPED node's (for `on_skipped: run`
        readers), as an ordinary skipped node's worker returns them."""
        handle = run.handles[(node_id, token)]
        handle.values.update(dict.fromkeys(run.plan.nodes[node_id].result_slots, Skipped(node_id)))

    def expand(self, run: LiveRun, node_id: str, token: int, report: AttemptReport) -> None:
        """The count task of map `node_id` succeeded: split its items into one object per child, make the children
        (schedule/mapping.py), reload the outputs of children a restored run had finished, and dispatch."""
        digests = report.digests or {}
        count = int(digests.get(COUNT_KEY, "0"))
        hashes = [digests[str(i)] for i in range(count)]
        node = run.plan.nodes[node_id]
        assert node.map is not None
        handle = run.handles[(node_id, token)]
        children = len(batches(count, node.map.batch_size))
        if children:
            options = off_head({"num_cpus": 0, "max_retries": 3, "num_returns": children})
            refs = self._tasks[1].options(**options).remote(node_id, node.map.over, node.map.batch_size or 0,
                                                         self._over_ref(run, node_id))
            for index, ref in enumerate([refs] if children == 1 else refs):
                handle.values[item_slot(index)] = ref
        actions = run.machine.expand(node_id, token, hashes)
        for index in range(children):  # a child writes its outputs: a resumed run reloads them, never reruns it
            # (a cached map's child always: a later hit reads them, as for any cache node: ExecutionPlan.persisted_outs)
            run.persist[f"{node_id}[{index}]"] = node.result_slots if self._persist or node.map.cache else ()
        for child, child_token in run.machine.restored_children(node_id).items():  # tokens are set: restored ok
            reused = REUSED_FROM.match(run.machine.nodes[child].reason)  # a re-run's: from the run it re-runs
            source = reused.group(1) if reused else run.record.submission_id
            refs = self._backend.load(self._artifacts, source, child, node.result_slots)
            run.handles[(child, child_token)] = AttemptHandle(None, refs, len(run.machine.nodes[child].attempts))
        self._perform(run, actions)

    def _gather_outputs(self, run: LiveRun, action: Gather) -> None:
        node = run.plan.nodes[action.node_id]
        slots = node.result_slots
        values = [run.handles[(child, token)].values[slot] for slot in slots for child, token in action.children]
        options = off_head({"num_cpus": 0, "max_retries": 3, "num_returns": len(slots)})
        refs = self._tasks[2].options(**options).remote(len(slots), action.batched, action.missing, *values)
        handle = run.handles[(action.node_id, action.token)]
        handle.values.update(zip(slots, [refs] if len(slots) == 1 else refs, strict=True))


def _done(inbox: Any, submission_id: str, node_id: str, token: int, result: Any) -> None:
    inbox.put(Done(submission_id, node_id, token, result))  # from a Ray thread: only enqueue


__all__ = ["MapTasks", "Message", "count_items", "gather", "split_items"]
