"""Booked capacity, pure: the cluster's free capacity and the running work that holds the rest, kept in step,
with the running work indexed by the instant it is estimated to end (EASY backfill walks those instants)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fabric.schedule.capacity import Cluster, Placement
from fabric.spec import Priority


@dataclass(frozen=True)
class Running:
    key: str
    team: str
    priority: Priority
    placement: Placement
    cpu: float
    gpu: float
    started_at: float
    ends_at: float  # started_at + its estimate
    pool: str | None = None
    preemptible: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.priority, Priority):
            object.__setattr__(self, "priority", Priority(self.priority))


@dataclass
class Freed:
    """What the running work on one node gives back at one instant (summed in the order it started)."""

    cpu: float
    gpus: dict[int, tuple[float, float]]  # gpu index -> fraction, memory GiB


class Booked:
    """`cluster` (free capacity, taken when work is admitted) and the running work, in the order it started.
    The admitted are taken from `cluster` by the policy and `add`ed by the caller once booked; `end` gives one
    back. `cluster` plus the running work is then constant: what the cluster would be with nothing running."""

    def __init__(self, cluster: Cluster, running: Iterable[Running] = ()) -> None:
        self.cluster = cluster
        self._items: dict[str, Running] = {}
        self._at: dict[float, dict[str, Running]] = {}  # ends_at -> the items ending then, in the order added
        self._freed: dict[float, dict[str, Freed]] = {}  # ends_at -> node id -> what comes back then (cached)
        self._instants: list[float] = []  # every ends_at, sorted
        self.in_pool: dict[str | None, int] = {}
        self._empty: Cluster | None = None
        for item in running:
            self.add(item)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Running]:
        return iter(list(self._items.values()))

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def add(self, item: Running) -> None:
        """`item` runs (its capacity is already taken from `cluster`)."""
        self.remove(item.key)
        self._items[item.key] = item
        at = self._at.get(item.ends_at)
        if at is None:
            at = self._at[item.ends_at] = {}
            bisect.insort(self._instants, item.ends_at)
        at[item.key] = item
        self._freed.pop(item.ends_at, None)
        self.in_pool[item.pool] = self.in_pool.get(item.pool, 0) + 1

    def remove(self, key: str) -> Running | None:
        """Forget `key` without giving its capacity back (the caller rebuilds the cluster)."""
        item = self._items.pop(key, None)
        if item is None:
            return None
        at = self._at[item.ends_at]
        del at[key]
        self._freed.pop(item.ends_at, None)
        if not at:
            del self._at[item.ends_at]
            del self._instants[bisect.bisect_left(self._instants, item.ends_at)]
        self.in_pool[item.pool] -= 1
        if not self.in_pool[item.pool]:
            del self.in_pool[item.pool]
        return item

    def end(self, key: str) -> Running | None:
        """`key` ended: its capacity comes back to `cluster`."""
        item = self.remove(key)
        if item is not None:
            self.cluster.give(item.cpu, item.placement)
        return item

    @property
    def instants(self) -> list[float]:
        return self._instants

    def ending(self, at: float) -> int:
        """How many running items end at instant `at`."""
        return len(self._at.get(at, ()))

    def freed(self, at: float) -> dict[str, Freed]:
        """What each node gets back at instant `at` (summed per node once, then cached until it changes)."""
        freed = self._freed.get(at)
        if freed is None:
            freed = {}
            for item in self._at[at].values():
                node = freed.get(item.placement.node_id)
                if node is None:
                    node = freed[item.placement.node_id] = Freed(0.0, {})
                node.cpu += item.cpu
                for index, fraction, memory in item.placement.gpu_shares:
                    was = node.gpus.get(index, (0.0, 0.0))
                    node.gpus[index] = (was[0] + fraction, was[1] + memory)
            self._freed[at] = freed
        return freed

    def empty(self, taken: Iterable[tuple[float, Placement]] = ()) -> Cluster:
        """The cluster with nothing running (cached: constant while admissions are `add`ed and ends `end`ed).
        `taken`: what was taken from `cluster` and not `add`ed yet (a decision under way), given back too."""
        if self._empty is None:
            self._empty = self.cluster.copy()
            for cpu, placement in taken:
                self._empty.give(cpu, placement)
            for item in self._items.values():
                self._empty.give(item.cpu, item.placement)
            self._empty.frozen = True
        return self._empty


def give_freed(cluster: Cluster, node_id: str, freed: Freed, sign: float = 1.0) -> None:
    """Give one node's `Freed` back to `cluster` (the node is gone: nothing comes back); `sign` -1: take it."""
    gpu_shares = tuple((index, sign * fraction, sign * memory) for index, (fraction, memory) in freed.gpus.items())
    cluster.give(sign * freed.cpu, Placement(node_id, gpu_shares))


__all__ = ["Booked", "Freed", "Running", "give_freed"]
