"""Admission's Ray side: the cluster as `ray.nodes()` reports it, held demand told to the Ray autoscaler, team
budgets booked in the quota actors (whose factory the registry passes down), and each team's day of use kept
in the store. The queue and its decisions are pure: `fabric.schedule.queue`."""

from __future__ import annotations

import json
import math
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

DEFAULT_GPU_MEM_GB = 80.0


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
    return AdmissionQueue(config, clock, nodes=ray_nodes, journal=StoreQuotaJournal(store),
                          quotas=partial(ActorQuotaBook, actor=quota_actor), demand=request_demand)


def cost_events(submission_id: str, charges: Iterable[Charge]) -> list[Event]:
    """What ended attempts cost, as the audit rows that keep it (replayed into each node's cost)."""
    return [Event(submission_id, c.node_id, EventKind.COST, EventKind.COST, c.at, c.attempt, f"{c.amount:.9f}")
            for c in charges]


def request_demand(bundles: list[dict[str, float]]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


def ray_nodes() -> list[Node]:
    nodes = []
    everything = ray.nodes()
    head = head_to_avoid(everything)  # tenant work never goes to the head while another node is alive
    for info in everything:
        if not info.get("Alive") or info["NodeID"] == head:
            continue
        total = info.get("Resources", {})
        gpus = int(math.floor(total.get("GPU", 0.0) + 1e-9))
        memory = total.get("gpu_mem_gb", DEFAULT_GPU_MEM_GB * gpus) / gpus if gpus else 0.0
        pools = [key.split(":", 1)[1] for key in total if key.startswith("pool:")]
        pool = pools[0] if pools else None
        # Spot capacity advertises the resource `spot` (cluster.yaml, k8s/) or sits in a pool named *-spot.
        spot = total.get("spot", 0.0) > 0 or bool(pool and pool.endswith("-spot"))
        nodes.append(Node(info["NodeID"], total.get("CPU", 0.0), [Gpu(i, 1.0, memory) for i in range(gpus)], pool,
                          spot))
    return nodes


__all__ = ["StoreQuotaJournal", "cost_events", "engine_scheduler", "ray_nodes", "request_demand"]
