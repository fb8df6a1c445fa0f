"""Group commit shared by the durable stores: queued events and logs, a background flusher, and reads
that merge what is queued with what is committed.

`append_events` and `put_log` are queued and written by a background thread in one transaction every
`flush_interval_s`; reads merge what is queued, `flush()` returns once everything queued is committed. A
failed background write keeps its batch queued and its error is raised by the next synchronous write or
`flush()`. A subclass supplies the SQL: `_write_batch`, `_select_events`, `_select_logs`,
`_select_event_rows`, `_unavailable` and `_close_connection`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from fabric.errors import FabricError
from fabric.record.store import Event, SubmissionRecord

_WAKE_AT = 20_000  # queued items that wake the flusher before its interval is up

LogItem = tuple[str, str, int, str, str | None]
EVENT_COLUMNS = ("id", "submission_id", "node_id", "source", "target", "at", "attempt", "reason", "actor", "team")


def event_row(e: Event) -> tuple[Any, ...]:
    """The values of one queued event, in INSERT order (the submission id twice: the team falls back to it)."""
    return (e.submission_id, e.node_id, e.source, e.target, e.at, e.attempt, e.reason,
            getattr(e, "actor", None), getattr(e, "team", None), e.submission_id)


class BatchedStore(ABC):
    """The queueing half of a durable Store; `_db_lock` guards the subclass's connection."""

    def _init_batching(self, flush_interval_s: float, name: str) -> None:
        """Set up the queues and the flusher; the subclass starts `_thread` once its connection is open."""
        self._interval = flush_interval_s
        self._db_lock = threading.RLock()  # guards the connection; held across a flush
        self._queue_lock = threading.Lock()  # guards the queues; never held while waiting on the database
        self._events: list[Event] = []
        self._logs: list[LogItem] = []
        self._new_submissions: list[_NewSubmission] = []  # waiting for their group commit (add_submission)
        self._bg_error: FabricError | None = None
        self._accepting = True  # False once close() starts: later appends are refused, not lost
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, name=f"fabric-store-flush:{name}", daemon=True)

    # -- what a backend supplies ---------------------------------------------------------------------

    @abstractmethod
    def _write_batch(self, events: list[Event], logs: list[LogItem]) -> None:
        """Write both lists in one transaction (under `_db_lock`), or raise STORE_UNAVAILABLE."""

    @abstractmethod
    def _insert_submissions(self, records: list[SubmissionRecord]) -> None:
        """Write (or replace) these submissions in one transaction, or raise STORE_UNAVAILABLE."""

    @abstractmethod
    def _select_events(self, submission_id: str) -> list[Event]: ...

    @abstractmethod
    def _select_logs(self, submission_id: str, node_id: str) -> list[tuple[int, str, str | None]]: ...

    @abstractmethod
    def _select_event_rows(self, submission_id: str | None) -> list[tuple[Any, ...]]:
        """Every committed event's EVENT_COLUMNS, in id order (all, or one submission's)."""

    @abstractmethod
    def _unavailable(self, cause: BaseException | str) -> FabricError: ...

    @abstractmethod
    def _close_connection(self) -> None: ...

    # -- the queue ------------------------------------------------------------------------------------

    def _raise_background_error(self) -> None:
        with self._queue_lock:
            error, self._bg_error = self._bg_error, None
        if error is not None:
            raise error

    def add_submission(self, record: SubmissionRecord) -> None:
        """Committed before it returns (a 202 promises it). Records that arrive while another commit holds the
        connection are written together by whichever of their callers gets it next: one transaction, one fsync,
        for all of them (group commit). A caller whose transaction fails takes its own record back and raises;
        the others' stay queued for their own callers to try."""
        self._raise_background_error()
        mine = _NewSubmission(record)
        with self._queue_lock:
            self._check_open()
            self._new_submissions.append(mine)
        with self._db_lock:
            if mine.committed:  # another caller's transaction took it
                return
            with self._queue_lock:
                batch = list(self._new_submissions)
            try:
                self._insert_submissions([item.record for item in batch])
            except BaseException:
                with self._queue_lock:
                    self._new_submissions.remove(mine)
                raise
            for item in batch:
                item.committed = True
            with self._queue_lock:
                self._new_submissions = [item for item in self._new_submissions if not item.committed]

    def append_events(self, events: list[Event]) -> None:
        with self._queue_lock:
            self._check_open()
            self._events.extend(events)
            wake = len(self._events) >= _WAKE_AT
        if wake:
            self._wake.set()

    def put_log(self, submission_id: str, node_id: str, attempt: int, text: str, path: str | None) -> None:
        with self._queue_lock:
            self._check_open()
            self._logs.append((submission_id, node_id, attempt, text, path))

    def events(self, submission_id: str) -> list[Event]:
        with self._db_lock:  # the flusher cannot move items between the queue and the database now
            rows = self._select_events(submission_id)
            with self._queue_lock:
                queued = [e for e in self._events if e.submission_id == submission_id]
        return rows + queued

    def get_log(self, submission_id: str, node_id: str) -> list[tuple[int, str, str | None]]:
        with self._db_lock:
            rows = self._select_logs(submission_id, node_id)
            with self._queue_lock:
                queued = [item for item in self._logs if item[0] == submission_id and item[1] == node_id]
        logs = {attempt: (text, path) for attempt, text, path in rows}
        for _, _, attempt, text, path in queued:
            logs[attempt] = (text, path)
        return [(attempt, text, path) for attempt, (text, path) in sorted(logs.items())]

    def pending(self) -> int:
        """How many events and logs are accepted but not yet committed."""
        with self._queue_lock:
            return len(self._events) + len(self._logs)

    def flush(self) -> None:
        """Commit everything queued; raises STORE_UNAVAILABLE (keeping the queue) if it cannot. Once it has
        succeeded, everything accepted is committed, so an earlier background failure is no longer news."""
        self._write_queued()
        with self._queue_lock:
            self._bg_error = None

    def flush_submission(self, submission_id: str) -> None:
        """Commit what is queued if some of it is this submission's; else return at once. Queued items leave the
        queue only once committed, so none of its own queued means all of it is on disk: a status read never
        waits behind another submission's (another team's) group commit."""
        with self._queue_lock:
            mine = (any(e.submission_id == submission_id for e in self._events)
                    or any(item[0] == submission_id for item in self._logs))
        if mine:
            self.flush()

    def _write_queued(self) -> None:
        with self._db_lock:
            with self._queue_lock:
                events, logs = list(self._events), list(self._logs)
            if not events and not logs:
                return
            self._write_batch(events, logs)
            with self._queue_lock:  # appends only ever extend the queues, so the written items are the head
                del self._events[:len(events)]
                del self._logs[:len(logs)]

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._write_queued()
            except Exception as exc:  # kept until a synchronous write or flush() raises it; the flusher lives on
                with self._queue_lock:
                    self._bg_error = exc if isinstance(exc, FabricError) else self._unavailable(exc)
            else:
                with self._queue_lock:  # a later batch went through: nothing is lost, so nothing to report
                    self._bg_error = None

    def _check_open(self) -> None:
        if not self._accepting:
            raise self._unavailable("the store is closed")

    # -- export and lifecycle -------------------------------------------------------------------------

    def export_events_parquet(self, path: str | Path, submission_id: str | None = None) -> int:
        """Write the events (all, or one submission's) to a Parquet file; returns the number of rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.flush()
        with self._db_lock:
            rows = self._select_event_rows(submission_id)
        types = (pa.int64(), pa.string(), pa.string(), pa.string(), pa.string(), pa.float64(), pa.int64(),
                 pa.string(), pa.string(), pa.string())
        schema = pa.schema([pa.field(name, kind) for name, kind in zip(EVENT_COLUMNS, types, strict=True)])
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(EVENT_COLUMNS)
        table = pa.Table.from_arrays([pa.array(col, type=kind) for col, kind in zip(columns, types, strict=True)],
                                     schema=schema)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, str(path))
        return table.num_rows

    def close(self) -> None:
        """Flush what is queued, stop the flusher and close the connection; raises if the flush fails."""
        with self._queue_lock:
            if not self._accepting:
                return
            self._accepting = False
        self._stop.set()
        self._wake.set()
        self._thread.join()
        try:
            self.flush()
        finally:
            with self._db_lock:
                self._close_connection()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NewSubmission:
    """A record on its way to the store; `committed` is set, under the connection's lock, once it is on disk."""

    __slots__ = ("record", "committed")

    def __init__(self, record: SubmissionRecord) -> None:
        self.record = record
        self.committed = False
