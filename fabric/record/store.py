"""The record of submissions: what was submitted, every state change, and node logs.

This in-memory store sits behind the `Store` protocol so that a durable store (SQLite, then
PostgreSQL) can replace it without touching the engine.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fabric.record.backfills import BackfillRecord, MemoryBackfills
from fabric.record.catalogue import MemoryCatalogue, PipelineVersion, ScheduleRecord
from fabric.record.page import Key, newest_first
from fabric.record.served import MemoryServed
from fabric.spec.policy import ServedName


@dataclass(frozen=True)
class Event:
    """One state change of a submission (node_id None) or of one of its nodes."""

    submission_id: str
    node_id: str | None
    source: str
    target: str
    at: float
    attempt: int = 0
    reason: str = ""


@dataclass
class SubmissionRecord:
    submission_id: str
    pipeline_id: str
    spec: dict[str, Any]
    runtime_params: dict[str, Any]
    plan_hash: str
    request_hash: str
    created_at: float
    team: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    state: str = "RUNNING"
    runtime_env: dict[str, Any] = field(default_factory=dict)  # as resolved at submit: needed to resume


class Store(Protocol):
    """What the engine and the registry need of a record. `MemoryStore` and `SqliteStore` both satisfy it,
    and mypy checks that wherever one is used as a Store (`registry.open_store`, the assertions below)."""

    def add_submission(self, record: SubmissionRecord) -> None: ...
    def get_submission(self, submission_id: str) -> SubmissionRecord | None: ...
    def set_state(self, submission_id: str, state: str) -> None: ...
    def list_submissions(self, state: str | None = None, limit: int = 50, labels: dict[str, str] | None = None,
                         before: Key | None = None, team: str | None = None,
                         search: str | None = None) -> list[SubmissionRecord]: ...
    def append_events(self, events: list[Event]) -> None: ...
    def events(self, submission_id: str) -> list[Event]: ...
    def put_log(self, submission_id: str, node_id: str, attempt: int, text: str, path: str | None) -> None: ...
    def get_log(self, submission_id: str, node_id: str) -> list[tuple[int, str, str | None]]: ...
    def non_terminal_submissions(self) -> list[SubmissionRecord]: ...
    def flush(self) -> None: ...
    def flush_submission(self, submission_id: str) -> None: ...
    def delete_submission_data(self, submission_id: str) -> dict[str, int]: ...
    # The pipeline catalogue (fabric/record/catalogue.py): immutable numbered versions per team.
    def add_pipeline_version(self, draft: PipelineVersion) -> tuple[PipelineVersion, bool]: ...
    def pipeline_versions(self, team: str | None, pipeline_id: str) -> list[PipelineVersion]: ...
    def latest_pipelines(self, team: str | None) -> list[PipelineVersion]: ...
    def put_schedule(self, record: ScheduleRecord) -> ScheduleRecord: ...
    def schedules(self, team: str | None, pipeline_id: str | None = None, *,
                  every_team: bool = False) -> list[ScheduleRecord]: ...
    def mark_tick(self, team: str | None, pipeline_id: str, name: str, tick: float) -> None: ...
    def add_backfill(self, record: BackfillRecord) -> tuple[BackfillRecord, bool]: ...
    def backfills(self, team: str | None, pipeline_id: str | None = None, *, every_team: bool = False,
                  state: str | None = None) -> list[BackfillRecord]: ...
    def set_backfill_state(self, team: str | None, backfill_id: str, state: str) -> bool: ...
    # Who owns each served model name (fabric/record/served.py): the gateway's authority, through the registry.
    def claim_served(self, name: str, served: ServedName, at: float) -> tuple[ServedName, bool]: ...
    def update_served(self, name: str, served: ServedName) -> bool: ...
    def release_served(self, name: str, owner: str) -> bool: ...
    def served_names(self, names: list[str] | None = None) -> dict[str, ServedName]: ...


class MemoryStore(MemoryCatalogue, MemoryBackfills, MemoryServed):
    """A thread-safe Store kept in memory (lost with the process)."""

    def __init__(self) -> None:
        super().__init__()
        MemoryBackfills.__init__(self)
        MemoryServed.__init__(self)
        self._lock = threading.Lock()
        self._submissions: dict[str, SubmissionRecord] = {}
        self._events: dict[str, list[Event]] = defaultdict(list)
        self._logs: dict[tuple[str, str], dict[int, tuple[str, str | None]]] = defaultdict(dict)

    def add_submission(self, record: SubmissionRecord) -> None:
        with self._lock:
            self._submissions[record.submission_id] = record

    def get_submission(self, submission_id: str) -> SubmissionRecord | None:
        return self._submissions.get(submission_id)

    def set_state(self, submission_id: str, state: str) -> None:
        with self._lock:
            self._submissions[submission_id].state = state

    def list_submissions(self, state: str | None = None, limit: int = 50, labels: dict[str, str] | None = None,
                         before: Key | None = None, team: str | None = None,
                         search: str | None = None) -> list[SubmissionRecord]:
        with self._lock:
            records = list(self._submissions.values())
        matching = [r for r in records
                    if (state is None or r.state == state) and (team is None or r.team == team)
                    and (not search or search in r.pipeline_id or search in r.submission_id)
                    and all(r.labels.get(k) == v for k, v in (labels or {}).items())]
        return newest_first(matching, lambda r: (r.created_at, r.submission_id), limit, before)

    def append_events(self, events: list[Event]) -> None:
        with self._lock:
            for event in events:
                self._events[event.submission_id].append(event)

    def events(self, submission_id: str) -> list[Event]:
        with self._lock:
            return list(self._events.get(submission_id, ()))

    def non_terminal_submissions(self) -> list[SubmissionRecord]:
        with self._lock:
            return [r for r in self._submissions.values() if r.state == "RUNNING"]

    def flush(self) -> None:
        """Nothing to write: memory is as durable as this store gets."""

    def flush_submission(self, submission_id: str) -> None:
        """Nothing to write, as `flush`."""

    def put_log(self, submission_id: str, node_id: str, attempt: int, text: str, path: str | None) -> None:
        with self._lock:
            self._logs[(submission_id, node_id)][attempt] = (text, path)

    def get_log(self, submission_id: str, node_id: str) -> list[tuple[int, str, str | None]]:
        with self._lock:
            logs = self._logs.get((submission_id, node_id), {})
            return [(attempt, text, path) for attempt, (text, path) in sorted(logs.items())]

    def delete_submission_data(self, submission_id: str) -> dict[str, int]:
        """Remove a submission's record and logs for retention; its events (the audit log) stay."""
        with self._lock:
            removed = self._submissions.pop(submission_id, None)
            logs = sum(len(by_attempt) for key, by_attempt in self._logs.items() if key[0] == submission_id)
            for key in [key for key in self._logs if key[0] == submission_id]:
                del self._logs[key]
            kept = len(self._events.get(submission_id, ()))
        return {"submissions": int(removed is not None), "logs": logs, "events_kept": kept}


if TYPE_CHECKING:  # mypy proves that the memory store is a Store (the SQLite one is checked in sqlite.py)
    _memory_is_a_store: Store = MemoryStore()
