"""The admission queue's index, pure: the waiting nodes of every run kept in queue order as they come and go,
so an event costs O(what changed), not a rescan of every run and a sort of every waiting node."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fabric.schedule.admission import Request
from fabric.spec import Priority


@dataclass(frozen=True)
class Entry:
    request: Request
    submission_id: str
    node_id: str
    machine: Any  # the RunMachine it waits in (told why it waits)


def rank_of(request: Request, now: float, aging_s: float) -> tuple[float, float, str]:
    """Its place in the queue (lower first): effective priority (aged), then FIFO; as `admission.order`."""
    aged = int(max(now - request.ready_at, 0.0) // aging_s) if aging_s > 0 else 0
    return (-min(request.priority.rank + aged, Priority.CRITICAL.rank), request.ready_at, request.key)


class Waitlist:
    """Waiting requests by key, in queue order. Aging moves a request up only in steps of `aging_s`:
    `reorder` (called once per full round) applies it; in between, new requests are inserted in place."""

    def __init__(self, aging_s: float) -> None:
        self._aging_s = aging_s
        self._entries: dict[str, Entry] = {}
        self._ranks: dict[str, tuple[float, float, str]] = {}
        self._order: list[tuple[float, float, str]] = []
        self._by_run: dict[str, set[str]] = {}
        self._min_cpu = self._min_gpu = math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    @property
    def min_cpu(self) -> float:
        """The fewest CPUs any waiting request asks (a cluster with less free everywhere admits nothing)."""
        return self._min_cpu

    @property
    def least(self) -> tuple[float, float]:
        """The least any waiting request asks: CPUs, and GPU (0 when one asks none)."""
        return self._min_cpu, self._min_gpu

    def sync_run(self, submission_id: str, waiting: list[str], make: Callable[[str], Entry], now: float) -> bool:
        """Make the run's entries match `waiting` (its nodes that wait now); True when one was added."""
        had = self._by_run.get(submission_id, set())
        keys = {f"{submission_id}/{node_id}": node_id for node_id in waiting}
        for key in had - keys.keys():
            self.remove(key)
        added = False
        for key, node_id in keys.items():
            if key not in self._entries:
                self.add(make(node_id), now)
                added = True
        return added

    def apply(self, submission_id: str, changes: list[tuple[str, bool]], make: Callable[[str], Entry],
              now: float) -> bool:
        """Follow the run's changes (node, waits now); True when one was added. O(changes)."""
        added = False
        for node_id, waits in changes:
            key = f"{submission_id}/{node_id}"
            if not waits:
                self.remove(key)
            elif key not in self._entries:
                self.add(make(node_id), now)
                added = True
        return added

    def forget_run(self, submission_id: str) -> None:
        for key in list(self._by_run.get(submission_id, ())):
            self.remove(key)

    def add(self, entry: Entry, now: float) -> None:
        key = entry.request.key
        if key in self._entries:
            self.remove(key)
        rank = rank_of(entry.request, now, self._aging_s)
        self._entries[key], self._ranks[key] = entry, rank
        bisect.insort(self._order, rank)
        self._by_run.setdefault(entry.submission_id, set()).add(key)
        self._min_cpu = min(self._min_cpu, entry.request.cpu)
        self._min_gpu = min(self._min_gpu, entry.request.gpu)

    def remove(self, key: str) -> Entry | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        rank = self._ranks.pop(key)
        at = bisect.bisect_left(self._order, rank)
        if at < len(self._order) and self._order[at] == rank:
            del self._order[at]
        keys = self._by_run.get(entry.submission_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_run[entry.submission_id]
        if not self._entries:
            self._min_cpu = self._min_gpu = math.inf
        return entry

    def reorder(self, now: float) -> None:
        """Apply aging to every request (O(n log n), once per full round), and recount the smallest ask."""
        self._ranks = {key: rank_of(e.request, now, self._aging_s) for key, e in self._entries.items()}
        self._order = sorted(self._ranks.values())
        self._min_cpu = min((e.request.cpu for e in self._entries.values()), default=math.inf)
        self._min_gpu = min((e.request.gpu for e in self._entries.values()), default=math.inf)

    def in_order(self) -> Iterator[str]:
        """Keys in queue order (a snapshot: safe to remove while iterating)."""
        return (rank[2] for rank in list(self._order))

    def requests(self) -> Iterator[Request]:
        """In queue order, lazily (a round stops early: no copy of the whole queue); the list must not change
        while it is read."""
        return (self._entries[rank[2]].request for rank in self._order)

    def head(self) -> Iterator[str]:
        """Keys in queue order, lazily (as `requests`)."""
        return (rank[2] for rank in self._order)

    def entries(self) -> Iterable[Entry]:
        return self._entries.values()


__all__ = ["Entry", "Waitlist", "rank_of"]
