"""A live submission as the engine holds it (`LiveRun`), and the engine's side of the `CacheHost` seam that
`NodeCache` talks through (so the cache never reaches into the engine's private state)."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fabric.execute.finished import Finished, status_of
from fabric.execute.ports import AttemptHandle, Backend, Message, Wake
from fabric.plan import ExecutionPlan
from fabric.record import SubmissionRecord
from fabric.schedule import Action, RunMachine


@dataclass
class LiveRun:
    record: SubmissionRecord
    plan: ExecutionPlan
    machine: RunMachine
    runtime_env: dict[str, Any] | None
    code: dict[str, Any]  # entrypoint -> ref of a pickled function, for code defined in a notebook
    persist: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> outs to write on success
    handles: dict[tuple[str, int], AttemptHandle] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    cancel_requested: bool = False

    @property
    def submission_id(self) -> str:
        return self.record.submission_id

    @property
    def team(self) -> str | None:
        return self.record.team


class EngineCacheHost:
    """`ports.CacheHost` over the engine's live runs: what the cache may see and do, and nothing more."""

    def __init__(self, runs: dict[str, LiveRun], perform: Callable[[LiveRun, list[Action]], None],
                 backend: Backend, artifacts: str, inbox: queue.SimpleQueue[Message]) -> None:
        self._runs = runs
        self._perform = perform
        self._backend = backend
        self._artifacts = artifacts
        self._inbox = inbox

    def live_runs(self) -> Iterator[LiveRun]:
        return iter(list(self._runs.values()))

    def run_of(self, submission_id: str) -> LiveRun | None:
        return self._runs.get(submission_id)

    def perform(self, submission_id: str, actions: list[Action]) -> None:
        self._perform(self._runs[submission_id], actions)

    def adopt_outputs(self, submission_id: str, node_id: str, token: int, values: dict[str, Any]) -> None:
        self._runs[submission_id].handles[(node_id, token)] = AttemptHandle(None, values, 0)

    def load_outputs(self, submission_id: str, node_id: str, outs: Sequence[str]) -> dict[str, Any]:
        return self._backend.load(self._artifacts, submission_id, node_id, outs)

    def wake(self, submission_id: str) -> None:
        self._inbox.put(Wake(submission_id))


__all__ = ["EngineCacheHost", "LiveRun"]


def in_flight(runs: Iterable[LiveRun]) -> list[AttemptHandle]:
    """The attempts Ray is running for these runs: each unfinished node's current dispatch."""
    return [handle for run in runs if not run.machine.done for (node_id, token), handle in run.handles.items()
            if handle.report is not None and run.machine.is_current(node_id, token)
            and not run.machine.nodes[node_id].state.terminal]


def held_team(run: LiveRun | Finished | None) -> tuple[bool, str | None]:
    """(held in the engine's memory, its team): a team's status reads are scoped without the store."""
    if run is None:
        return False, None
    return True, run.record.team if isinstance(run, LiveRun) else run.team


def finished_run(run: LiveRun) -> Finished:
    """What is kept of a run once it ended: its status, and the output refs of the nodes that succeeded."""
    # Its outs only: a map node's handle also holds each item it handed a child (execute/mapping.py), not an out.
    results = {node_id: {slot: ref for slot, ref in run.handles[(node_id, node.token)].values.items()
                         if slot in node.plan.result_slots}
               for node_id, node in run.machine.nodes.items()
               if node.state.ok and node.token is not None and (node_id, node.token) in run.handles}
    status = status_of(run.machine, run.record.submission_id).to_dict()
    return Finished(json.dumps(status, separators=(",", ":")).encode(), results, run.record.team)
