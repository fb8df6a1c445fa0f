"""Admission's Ray side: the cluster as `ray.nodes()` reports it, held demand told to the Ray autoscaler, team
budgets booked in the quota actors (whose factory the registry passes down), and each team's day of use kept
in the store. The queue and its decisions are pure: `fabric.schedule.queue`. Every Ray call here runs on a
thread of its own (`Watch`, the quota book's sync thread): the engine's lock is never held across one."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import ray

from fabric.execute.backend import head_to_avoid
from fabric.execute.quotas import ActorQuotaBook
from fabric.record import Event, Store
from fabric.schedule.admission import Gpu, Node
from fabric.schedule.queue import AdmissionQueue, Charge, SchedulingConfig
from fabric.states import QUOTA_SUBJECT, EventKind

log = logging.getLogger(__name__)

DEFAULT_GPU_MEM_GB = 80.0
NODES_EVERY_S = 2.0


class Watch:
    """`ray.nodes()` polled and the autoscaler told of held demand, from a daemon thread: the engine reads
    the latest cluster and posts the latest demand, never waiting on Ray (a slow GCS stalls only this)."""

    def __init__(self, nodes: Callable[[], list[Node]], demand: Callable[[list[dict[str, float]]], None]) -> None:
        self._list, self._tell = nodes, demand
        self._nodes: list[Node] = []
        self._demand: list[dict[str, float]] | None = None
        self._told: list[dict[str, float]] | None = None
        self._failing = False
        self._wake = threading.Event()
        self._refresh()  # the first look is taken by the registry as it starts, not under the engine's lock
        threading.Thread(target=self._loop, name="fabric-cluster-watch", daemon=True).start()

    def nodes(self) -> list[Node]:
        return self._nodes

    def demand(self, bundles: list[dict[str, float]]) -> None:
        self._demand = bundles
        self._wake.set()

    def _refresh(self) -> None:
        try:
            self._nodes = self._list()
            self._failing = False
        except Exception:  # noqa: BLE001 - the last view stands until Ray answers again
            # Said once per outage, not every poll.
            log.log(logging.DEBUG if self._failing else logging.WARNING, "fabric could not list Ray's nodes",
                    exc_info=True)
            self._failing = True

    def _loop(self) -> None:
        next_at = time.monotonic() + NODES_EVERY_S
        while True:
            self._wake.wait(max(next_at - time.monotonic(), 0.0))
            self._wake.clear()
            if time.monotonic() >= next_at:
                self._refresh()
                next_at = time.monotonic() + NODES_EVERY_S
            demand = self._demand
            if demand is not None and demand != self._told:
                try:
                    self._tell(demand)
                    self._told = demand
                except Exception:  # noqa: BLE001 - no autoscaler here: nothing to tell
                    log.debug("the demand hint failed", exc_info=True)


class StoreQuotaJournal:
    """Each team's charged use of the day, as QUOTA_USE events under `_quota:<team>` in the store (appended
    when an attempt stops; the last one counts), so a restarted registry does not hand out a spent budget."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def load(self, team: str) -> dict[str, Any] | None:
        events = self._store.events(f"{QUOTA_SUBJECT}{team}")
        return json.loads(events[-1].reason) if events else None

    def save(self, team: str, state: dict[str, Any]) -> None:
        use = EventKind.QUOTA_USE
        self._store.append_events([Event(f"{QUOTA_SUBJECT}{team}", None, use, use, time.time(),
                                         reason=json.dumps(state))])


def engine_scheduler(config: SchedulingConfig, clock: Callable[[], float], store: Store,
                     quota_actor: Callable[[str], Any]) -> AdmissionQueue:
    """The registry's admission queue: Ray's nodes, quota use saved in the store, budgets booked in the
    per-team quota actors that `quota_actor(team)` finds or makes, held demand shown to the autoscaler."""
    watch = Watch(partial(ray_nodes, config.families), request_demand)
    return AdmissionQueue(config, clock, nodes=watch.nodes, journal=StoreQuotaJournal(store),
                          quotas=partial(ActorQuotaBook, actor=quota_actor), demand=watch.demand, refresh_s=0.0)


def cost_events(submission_id: str, charges: Iterable[Charge]) -> list[Event]:
    """What ended attempts cost, as the audit rows that keep it (replayed into each node's cost)."""
    return [Event(submission_id, c.node_id, EventKind.COST, EventKind.COST, c.at, c.attempt, f"{c.amount:.9f}")
            for c in charges]


def request_demand(bundles: list[dict[str, float]]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


def ray_nodes(families: frozenset[str] = frozenset()) -> list[Node]:
    """Ray's live nodes. A node's pool is its node type's (`pool:<type>`); the other pools it advertises are
    the queue families it runs (`families`, from the config's `runs_on`)."""
    nodes = []
    everything = ray.nodes()
    head = head_to_avoid(everything)  # tenant work never goes to the head while another node is alive
    for info in everything:
        if not info.get("Alive") or info["NodeID"] == head:
            continue
        total = info.get("Resources", {})
        gpus = int(math.floor(total.get("GPU", 0.0) + 1e-9))
        memory = total.get("gpu_mem_gb", DEFAULT_GPU_MEM_GB * gpus) / gpus if gpus else 0.0
        pools = sorted(key.split(":", 1)[1] for key in total if key.startswith("pool:"))
        own = [p for p in pools if p not in families]
        pool = own[0] if own else (pools[0] if pools else None)
        # Spot capacity advertises the resource `spot` (cluster.yaml, k8s/) or sits in a pool named *-spot.
        spot = total.get("spot", 0.0) > 0 or bool(pool and pool.endswith("-spot"))
        nodes.append(Node(info["NodeID"], total.get("CPU", 0.0), [Gpu(i, 1.0, memory) for i in range(gpus)], pool,
                          spot, frozenset(pools) - {pool} if pool else frozenset()))
    return nodes


__all__ = ["StoreQuotaJournal", "Watch", "cost_events", "engine_scheduler", "ray_nodes", "request_demand"]
