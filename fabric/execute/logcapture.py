"""A node attempt's log while it runs: Python writes and file descriptors 1 and 2, shipped in chunks.

File descriptors 1 and 2 are pointed at an in-memory file for the attempt (`memfd`, `os.dup2`), so the output
of subprocesses and C extensions is captured too, not only `sys.stdout`. No writer ever blocks on the capture.
One pump thread per process (started once, not per attempt: a thread start and join cost more than a no-op
node) reads what arrived and ships it every `interval` seconds or `chunk` bytes (to the head:
fabric/execute/sink.py), so a running node can be followed; `stop` reads the rest in the caller's thread.
Shipped bytes are released from the in-memory file; only the last `tail_bytes` stay, for the attempt's report.
"""

from __future__ import annotations

import ctypes
import io
import os
import tempfile
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

CHUNK_BYTES = 64 * 1024
INTERVAL_S = 1.0
TAIL_BYTES = 64 * 1024
READ_BYTES = 4 << 20  # at most this much read from the file per pass (a large burst comes in several)
RELEASE_BYTES = 1 << 20  # shipped bytes are given back to memory once this many have gathered
_PUNCH_HOLE = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE

Ship = Callable[[int, bytes], None]  # (offset in the attempt's log, bytes)


@lru_cache(maxsize=1)
def _libc() -> Any:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _flush_c_stdio() -> None:
    try:  # C's own stdout buffer, so a C extension's last printf lands in this attempt's log
        _libc().fflush(None)
    except (OSError, AttributeError):
        pass


def _release(fd: int, length: int) -> None:
    """Free the first `length` bytes of the in-memory file (reads there become zeros; nothing reads them again)."""
    try:
        _libc().fallocate(fd, _PUNCH_HOLE, ctypes.c_long(0), ctypes.c_long(length))
    except (OSError, AttributeError, ctypes.ArgumentError):
        pass


def _memory_file() -> int:
    try:
        return os.memfd_create("fabric-log", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # no memfd here: an unlinked temporary file does the same
        with tempfile.TemporaryFile() as handle:
            return os.dup(handle.fileno())


class _Pump:
    """The process's one thread that polls every started capture."""

    def __init__(self) -> None:
        self._captures: set[LogCapture] = set()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, capture: LogCapture) -> None:
        with self._wake:
            self._captures.add(capture)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fabric-log", daemon=True)
                self._thread.start()
            self._wake.notify()

    def remove(self, capture: LogCapture) -> None:
        with self._wake:
            self._captures.discard(capture)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._captures:
                    self._wake.wait()
                captures = list(self._captures)
                self._wake.wait(min(c.interval for c in captures))
                captures = list(self._captures)
            for capture in captures:
                capture.poll()


_PUMP = _Pump()


class LogCapture:
    """Start it, write to it (or to fds 1 and 2), stop it; `tail()` and `total` say what it saw."""

    def __init__(self, ship: Ship | None, *, fds: tuple[int, ...] = (1, 2), chunk: int = CHUNK_BYTES,
                 interval: float = INTERVAL_S, tail_bytes: int = TAIL_BYTES) -> None:
        self._ship, self._fds, self._chunk, self.interval, self._tail_bytes = ship, fds, chunk, interval, tail_bytes
        self._lock = threading.Lock()  # the pending bytes and the tail
        self._reading = threading.Lock()  # one reader of the file at a time: the pump or `stop`
        self._pending = bytearray()
        self._tail = bytearray()
        self._shipped = 0  # offset of the first pending byte
        self._last_ship = time.monotonic()
        self.total = 0
        self.ship_errors = 0
        self._saved: list[tuple[int, int]] = []
        self._file: int | None = None  # the in-memory file behind fds 1 and 2
        self._read = 0  # how far it is read
        self._released = 0  # how much of it is given back

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        file = self._file
        if file is not None:  # into the same file as fds 1 and 2, so Python and C output stay in order
            view = memoryview(data)
            while view:
                view = view[os.write(file, view):]
        else:
            self._add(data)
        return len(text)

    def _add(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            self._pending += data
            self._tail += data
            if len(self._tail) > 2 * self._tail_bytes:
                del self._tail[:-self._tail_bytes]
            self.total += len(data)
            burst = len(self._pending) >= 4 * self._chunk
        if burst:  # a writer far ahead of the pump: ship from here rather than hold it all
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._pending:
                return
            offset, data = self._shipped, bytes(self._pending)
            self._shipped += len(data)
            self._pending.clear()
            self._last_ship = time.monotonic()
        if self._ship is None:
            return
        try:
            self._ship(offset, data)
        except Exception:  # noqa: BLE001 - the node matters more than its log; the tail still reaches the head
            self.ship_errors += 1

    def tail(self) -> str:
        """The last `tail_bytes` written so far (what is in the file too: `total` then counts it)."""
        if self._file is not None:
            self.poll()
        with self._lock:
            return bytes(self._tail[-self._tail_bytes:]).decode("utf-8", "replace")

    def start(self) -> LogCapture:
        if self._fds:
            try:
                _flush_c_stdio()
                self._file = _memory_file()
                for fd in self._fds:
                    self._saved.append((fd, os.dup(fd)))
                    os.dup2(self._file, fd)
            except OSError:  # no fd 1/2 to take over: capture Python's writes only
                self._restore()
                self._close_file()
        _PUMP.add(self)
        return self

    def _restore(self) -> None:
        for fd, saved in self._saved:
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()

    def _close_file(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def poll(self, *, final: bool = False) -> None:
        """Read what arrived in the file; ship when a chunk is full or the interval has passed (always if final)."""
        with self._reading:
            file = self._file
            while file is not None:
                size = os.fstat(file).st_size
                if size <= self._read:
                    break
                data = os.pread(file, min(size - self._read, READ_BYTES), self._read)
                if not data:
                    break
                self._read += len(data)
                self._add(data)
            with self._lock:
                due = final or len(self._pending) >= self._chunk or time.monotonic() - self._last_ship >= self.interval
            if due:
                self.flush()
            if file is not None and self._read - self._released >= RELEASE_BYTES:
                _release(file, self._read)
                self._released = self._read

    def stop(self) -> None:
        """Give fds 1 and 2 back, read what is left, ship the rest."""
        _flush_c_stdio()
        self._restore()
        _PUMP.remove(self)
        self.poll(final=True)
        with self._reading:
            self._close_file()
        self.flush()


class CaptureStream(io.TextIOBase):
    """What `sys.stdout` and `sys.stderr` are during an attempt: text into the capture."""

    def __init__(self, capture: LogCapture) -> None:
        self._capture = capture

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self._capture.write(text)


__all__ = ["CHUNK_BYTES", "CaptureStream", "LogCapture", "TAIL_BYTES"]
