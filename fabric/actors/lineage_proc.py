"""The lineage process, the registry's side: OpenLineage events are built and sent in a child process
(lineage_child.py), so building them (plans, output files, JSON) never takes the registry's interpreter lock
from its engine.

The registry's observer thread writes framed pickles to the child's stdin: the settings first, then each
submission's record before its first events, then batches of recorded events. The child confirms each batch,
once its lineage is sent, by writing the batch's number (8 bytes) to a pipe of its own, so nothing a library
prints can be taken for an answer. Both ends are this package, run by the same user: the pipe carries nothing
from tenants that was not already in the registry's store. The child exits at end of input, so a registry that
dies takes it along."""

from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from fabric.record import Event, SubmissionRecord
from fabric.settings import Settings

log = logging.getLogger(__name__)

HEADER = struct.Struct("!I")
ACK = struct.Struct("!Q")
MAX_TRIES = 3  # a batch its child died on this many times is dropped (said in the log): it would kill every child
RESTART_BACKOFF_S = (0.0, 1.0, 5.0, 30.0)  # waits before each restart in a row (the last repeats)
HEALTHY_AFTER_S = 60.0  # a child that lived this long resets the backoff


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
    """The registry's handle on its lineage child: sends records and event batches, counts confirmations.

    A batch stays in memory until the child confirms it. If the child dies, another is started (after a backoff
    when they keep dying) and gets every unconfirmed batch again, with its submissions' records, marked
    `resumed` for a run the old child had started: lineage may then come twice, never go missing. A batch that
    MAX_TRIES children died on is dropped and said in the log (`dropped`)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # `_io` orders writes to the child and its restarts; `_state` guards the counters. The thread reading
        # confirmations takes only `_state`, so a write blocked on a busy child never stops them.
        self._io = threading.RLock()
        self._state = threading.Condition()
        self._unacked: deque[tuple[int, dict[str, SubmissionRecord], list[Event]]] = deque()
        self._tries: dict[int, int] = {}  # an unconfirmed batch -> children it was handed to
        self._sent = self._acked = 0
        self._records: dict[str, SubmissionRecord] = {}  # sent to the current child, by submission
        self._started: set[str] = set()  # submissions a child confirmed events of: a new child resumes them
        self._child: subprocess.Popen[bytes] | None = None
        self._born = 0.0
        self.restarts = self.dropped = 0
        self._start()

    def _start(self) -> None:
        """A new child (with `_io` held, or from __init__); on failure `_child` stays None and the next send
        tries again."""
        reader, writer = os.pipe()
        try:
            # -P: the registry's working directory is not put on the child's import path; a library that prints
            # goes to the registry's log (fd 2), never into the confirmations.
            child = subprocess.Popen([sys.executable, "-P", "-m", "fabric.actors.lineage_child", str(writer)],
                                     stdin=subprocess.PIPE, stdout=2, pass_fds=(writer,),
                                     env=os.environ.copy())
        except OSError:
            log.exception("fabric could not start its lineage process")
            os.close(reader)
            return
        finally:
            os.close(writer)
        self._child, self._born = child, time.monotonic()
        threading.Thread(target=self._read_acks, args=(child, os.fdopen(reader, "rb")),
                         name="fabric-lineage-acks", daemon=True).start()
        try:
            assert child.stdin is not None
            write_frame(child.stdin, self._settings)
        except OSError:  # it died at once: the reader sees it end and starts another
            pass

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
        """Its run ended: a later run of it is new to the child."""
        with self._io:
            self._records.pop(submission_id, None)
            self._started.discard(submission_id)

    def drain(self, timeout: float) -> bool:
        """Wait until the child has sent every batch handed over so far."""
        with self._state:
            return self._state.wait_for(lambda: self._acked >= self._sent, timeout)

    def _write(self, records: dict[str, SubmissionRecord], number: int, events: list[Event]) -> None:
        child = self._child
        if child is None or child.stdin is None:
            raise BrokenPipeError("no lineage process")
        self._tries[number] = self._tries.get(number, 0) + 1
        for sid, record in records.items():
            write_frame(child.stdin, ("record", record, sid in self._started))
        write_frame(child.stdin, ("events", number, events))

    def _read_acks(self, child: subprocess.Popen[bytes], acks: IO[bytes]) -> None:
        try:
            while len(data := acks.read(ACK.size)) == ACK.size:
                number = ACK.unpack(data)[0]
                with self._state:
                    self._acked = max(self._acked, number)
                    while self._unacked and self._unacked[0][0] <= self._acked:
                        done, _, events = self._unacked.popleft()
                        self._tries.pop(done, None)
                        self._started.update(e.submission_id for e in events)
                    self._state.notify_all()
        except (OSError, ValueError):
            log.exception("fabric's lineage process gave an unreadable answer")
        finally:
            acks.close()
        if child.poll() is None:
            child.kill()
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
        lived = time.monotonic() - self._born
        self.restarts += 1
        in_a_row = 0 if lived >= HEALTHY_AFTER_S else min(self.restarts, len(RESTART_BACKOFF_S)) - 1
        time.sleep(RESTART_BACKOFF_S[in_a_row])  # the observer's queue fills meanwhile, then defers to the store
        self._drop_poison()
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

    def _drop_poison(self) -> None:
        with self._state:
            while self._unacked and self._tries.get(self._unacked[0][0], 0) >= MAX_TRIES:
                number, _, events = self._unacked.popleft()
                self._tries.pop(number, None)
                self._acked = max(self._acked, number)
                self.dropped += len(events)
                log.error("fabric dropped %d lineage events: %d lineage processes died on them", len(events),
                          MAX_TRIES)
            self._state.notify_all()

    def close(self) -> None:
        with self._io:
            child, self._child = self._child, None
        if child is not None and child.stdin is not None:
            child.stdin.close()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
