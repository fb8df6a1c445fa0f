"""A node attempt's log while it runs: Python writes and file descriptors 1 and 2, shipped in chunks.

File descriptors 1 and 2 are pointed at a pipe for the attempt (`os.dup2`), so the output of subprocesses
and C extensions is captured too, not only `sys.stdout`; a reader thread drains the pipe and ships what
arrived every `interval` seconds or `chunk` bytes (to the head: fabric/execute/sink.py), so a running node
can be followed. Only the last `tail_bytes` stay in memory, for the attempt's report.
"""

from __future__ import annotations

import ctypes
import io
import os
import select
import threading
import time
from collections.abc import Callable

CHUNK_BYTES = 64 * 1024
INTERVAL_S = 1.0
TAIL_BYTES = 64 * 1024
DRAIN_S = 0.5  # after the attempt: how long to wait for a child that still holds the pipe

Ship = Callable[[int, bytes], None]  # (offset in the attempt's log, bytes)


def _flush_c_stdio() -> None:
    try:  # C's own stdout buffer, so a C extension's last printf lands in this attempt's log
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


class LogCapture:
    """Start it, write to it (or to fds 1 and 2), stop it; `tail()` and `total` say what it saw."""

    def __init__(self, ship: Ship | None, *, fds: tuple[int, ...] = (1, 2), chunk: int = CHUNK_BYTES,
                 interval: float = INTERVAL_S, tail_bytes: int = TAIL_BYTES) -> None:
        self._ship, self._fds, self._chunk, self._interval, self._tail_bytes = ship, fds, chunk, interval, tail_bytes
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._tail = bytearray()
        self._shipped = 0  # offset of the first pending byte
        self.total = 0
        self.ship_errors = 0
        self._saved: list[tuple[int, int]] = []
        self._read_fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, text: str) -> int:
        self._add(text.encode("utf-8", "replace"))
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
        if burst:  # a writer far ahead of the thread: ship from here rather than hold it all
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._pending:
                return
            offset, data = self._shipped, bytes(self._pending)
            self._shipped += len(data)
            self._pending.clear()
        if self._ship is None:
            return
        try:
            self._ship(offset, data)
        except Exception:  # noqa: BLE001 - the node matters more than its log; the tail still reaches the head
            self.ship_errors += 1

    def tail(self) -> str:
        with self._lock:
            return bytes(self._tail[-self._tail_bytes:]).decode("utf-8", "replace")

    def start(self) -> LogCapture:
        if self._fds:
            try:
                _flush_c_stdio()
                read_fd, write_fd = os.pipe()
                for fd in self._fds:
                    self._saved.append((fd, os.dup(fd)))
                    os.dup2(write_fd, fd)
                os.close(write_fd)
                self._read_fd = read_fd
            except OSError:  # no fd 1/2 to take over: capture Python's writes only
                self._restore()
        self._thread = threading.Thread(target=self._run, name="fabric-log", daemon=True)
        self._thread.start()
        return self

    def _restore(self) -> None:
        for fd, saved in self._saved:
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()

    def _run(self) -> None:
        last = time.monotonic()
        drain_until: float | None = None
        while True:
            now = time.monotonic()
            if self._stop.is_set() and drain_until is None:
                drain_until = now + DRAIN_S
            if self._read_fd is None:
                if self._stop.wait(max(0.0, self._interval - (now - last))):
                    break
            else:
                wait = max(0.0, self._interval - (now - last))
                if drain_until is not None:
                    wait = min(wait, max(0.0, drain_until - now), 0.05)
                ready, _, _ = select.select([self._read_fd], [], [], wait)
                if ready:
                    data = os.read(self._read_fd, 1 << 16)
                    if not data:
                        break  # every writer closed: the attempt's output is all here
                    self._add(data)
                elif drain_until is not None and time.monotonic() >= drain_until:
                    break
            with self._lock:
                due = len(self._pending) >= self._chunk
            if due or time.monotonic() - last >= self._interval:
                self.flush()
                last = time.monotonic()

    def stop(self) -> None:
        """Give fds 1 and 2 back, read what is left in the pipe, ship the rest."""
        _flush_c_stdio()
        self._restore()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=DRAIN_S + 5)
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
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
