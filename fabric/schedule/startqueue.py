"""Starts held by the `queue` overlap policy: a bounded FIFO per team and pipeline, released as runs end (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_QUEUED = 10  # per team and pipeline: a start beyond this many waiting is skipped, not queued

Key = tuple[str | None, str]  # (team, pipeline_id)


@dataclass(frozen=True)
class QueuedStart:
    submission_id: str
    queued_at: float
    version: int  # pinned when queued: the version the start asked for (or the latest then)
    request: Any  # what starting it needs, opaque here (the runtime params and the team's grants)


class StartQueue:
    """Waiting starts, oldest first, per (team, pipeline). A submission id queues once: a retried start answers
    its place. Not thread-safe: the catalogue holds its lock around every call."""

    def __init__(self, clock: Callable[[], float], bound: int = MAX_QUEUED) -> None:
        self._clock = clock
        self.bound = bound
        self._waiting: dict[Key, list[QueuedStart]] = {}

    def offer(self, key: Key, submission_id: str, version: int, request: Any) -> int | None:
        """Queue a start; its place (1 = next), or None when `bound` starts already wait (nothing queued)."""
        line = self._waiting.setdefault(key, [])
        for place, item in enumerate(line, start=1):
            if item.submission_id == submission_id:
                return place
        if len(line) >= self.bound:
            if not line:
                del self._waiting[key]
            return None
        line.append(QueuedStart(submission_id, self._clock(), version, request))
        return len(line)

    def lines(self) -> list[Key]:  # the (team, pipeline) keys with starts waiting
        return list(self._waiting)

    def take(self, key: Key, free: int) -> list[QueuedStart]:
        """Remove and return the `free` oldest waiting starts of `key` (free <= 0: none)."""
        line = self._waiting.get(key, [])
        taken, rest = line[:max(free, 0)], line[max(free, 0):]
        if rest:
            self._waiting[key] = rest
        else:
            self._waiting.pop(key, None)
        return taken

    def waiting(self, key: Key) -> list[QueuedStart]:
        return list(self._waiting.get(key, ()))
