"""The lineage process, the registry's side: OpenLineage events are built and sent in a child process
(lineage_child.py), so building them (plans, output files, JSON) never takes the registry's interpreter lock
from its engine.

The registry's observer thread writes framed pickles to the child's stdin: the settings first, then each
submission's record before its first events, then batches of recorded events. The child answers each batch
with its number once that batch's lineage is sent. Both ends are this package, run by the same user: the pipe
carries nothing from tenants that was not already in the registry's store. The child exits at end of input,
so a registry that dies takes it along."""

from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from fabric.record import Event, SubmissionRecord
from fabric.settings import Settings

log = logging.getLogger(__name__)

HEADER = struct.Struct("!I")


def write_frame(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=5)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    size = HEADER.unpack(header)[0]
    data = stream.read(size)
    return pickle.loads(data) if len(data) == size else None


class LineageProcess:
    """The registry's handle on its lineage child: sends records and event batches, counts acknowledgements.

    A batch stays in memory until the child acknowledges it. If the child dies, it is started again and every
    unacknowledged batch is sent again (with its submissions' records): lineage may come twice, never lost."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # `_io` orders writes to the child and its restarts; `_state` guards the counters. The thread reading
        # acknowledgements takes only `_state`, so a write blocked on a busy child never stops them.
        self._io = threading.RLock()
        self._state = threading.Condition()
        self._unacked: deque[tuple[int, dict[str, SubmissionRecord], list[Event]]] = deque()
        self._sent = self._acked = 0
        self._records: dict[str, SubmissionRecord] = {}  # sent to the current child, by submission
        self._child: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        child = subprocess.Popen([sys.executable, "-m", "fabric.actors.lineage_child"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, env=os.environ.copy(), close_fds=True)
        assert child.stdin is not None and child.stdout is not None
        self._child = child
        try:
            write_frame(child.stdin, self._settings)
        except OSError:  # it died at once: the reader below sees it end and starts another
            pass
        threading.Thread(target=self._read_acks, args=(child,), name="fabric-lineage-acks", daemon=True).start()

    def send(self, events: list[Event], record_of: Callable[[str], SubmissionRecord | None]) -> None:
        """`events` in recorded order; `record_of(sid)` finds a submission's record the child has not had yet
        (events of a submission with no record are left out)."""
        with self._io:
            fresh: dict[str, SubmissionRecord] = {}
            for sid in dict.fromkeys(e.submission_id for e in events):
                if sid not in self._records and (record := record_of(sid)) is not None:
                    fresh[sid] = self._records[sid] = record
            events = [e for e in events if e.submission_id in self._records]
            if not events:
                return
            # Each batch keeps its submissions' records: a new child needs them, even for a run ended meanwhile.
            needed = {sid: self._records[sid] for sid in {e.submission_id for e in events}}
            with self._state:
                self._sent += 1
                number = self._sent
                self._unacked.append((number, needed, events))
            try:
                self._write(fresh, number, events)
            except OSError:
                self._restart()

    def forget(self, submission_id: str) -> None:
        with self._io:
            self._records.pop(submission_id, None)

    def drain(self, timeout: float) -> bool:
        """Wait until the child has sent every batch handed over so far."""
        with self._state:
            return self._state.wait_for(lambda: self._acked >= self._sent, timeout)

    def _write(self, records: dict[str, SubmissionRecord], number: int, events: list[Event]) -> None:
        assert self._child is not None and self._child.stdin is not None
        for record in records.values():
            write_frame(self._child.stdin, ("record", record))
        write_frame(self._child.stdin, ("events", number, events))

    def _read_acks(self, child: subprocess.Popen[bytes]) -> None:
        assert child.stdout is not None
        while (message := read_frame(child.stdout)) is not None:
            with self._state:
                self._acked = max(self._acked, message)
                while self._unacked and self._unacked[0][0] <= self._acked:
                    self._unacked.popleft()
                self._state.notify_all()
        child.wait()
        with self._io:
            if child is self._child:  # not stopped by us: start again and send what it did not confirm
                log.error("fabric's lineage process exited (code %s) with %d batches unconfirmed; starting it "
                          "again", child.returncode, len(self._unacked))
                self._restart()

    def _restart(self) -> None:
        """With `_io` held: a new child, given every batch the old one did not confirm (and their records)."""
        old, self._child = self._child, None
        if old is not None and old.poll() is None:
            old.kill()
        self.restarts += 1
        self._start()
        self._records = {}  # the new child knows none: each submission's record goes again before its events
        with self._state:
            pending = list(self._unacked)
        try:
            for number, records, events in pending:
                fresh = {sid: r for sid, r in records.items() if sid not in self._records}
                self._records.update(fresh)
                self._write(fresh, number, events)
        except OSError:
            log.exception("fabric could not hand lineage to its restarted process")

    def close(self) -> None:
        with self._io:
            child, self._child = self._child, None
        if child is not None and child.stdin is not None:
            child.stdin.close()
            child.wait(10)
