"""Admission policy, pure: which ready nodes go to Ray now, where, and why the others wait.

Priorities (low < normal < high < critical) with aging, FIFO by ready time within one; EASY backfill
(the head of the queue that does not fit holds a reservation, and a smaller node jumps ahead only
if it cannot push that reservation back, judged by declared run times); GPU packing best-fit over
per-GPU fractions and memory hints; pool concurrency limits; a quota hook; preemption victims.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from fabric.schedule.booked import Booked, Running, give_freed
from fabric.schedule.capacity import EPSILON, Cluster, Gpu, Node, Placement, Request, score
from fabric.spec import Priority
from fabric.states import Wait, WaitReason

PRIORITIES = tuple(Priority)  # low, normal, high, critical: in rank order
MAX_RESERVATIONS = 8  # urgent nodes holding a reservation at once (each costs a cluster copy)


@dataclass(frozen=True)
class Waiting:
    position: int  # 1 = next
    wait: Wait

    @property
    def why(self) -> WaitReason:
        return self.wait.why

    @property
    def reason(self) -> str:  # as shown in status and the queue view
        return str(self.wait)


@dataclass(frozen=True)
class Decision:
    admit: tuple[tuple[Request, Placement], ...]
    waiting: Mapping[str, Waiting]
    reservation: tuple[str, float] | None  # (key, the time it is guaranteed to start by)


def order(queue: Iterable[Request], now: float, aging_s: float) -> list[Request]:
    """Highest effective priority first (a step up per `aging_s` waited, so nothing starves), then FIFO."""
    def effective(request: Request) -> float:
        aged = int(max(now - request.ready_at, 0.0) // aging_s) if aging_s > 0 else 0
        return min(request.priority.rank + aged, Priority.CRITICAL.rank)

    return sorted(queue, key=lambda r: (-effective(r), r.ready_at, r.key))


# Asked only for a request about to be admitted: book its quota and say None, or say why it must wait.
QuotaCheck = Callable[[Request], Wait | None]


@dataclass(frozen=True)
class PoolLimit:
    max_concurrency: int


class AdmissionPolicy:
    def __init__(self, pools: Mapping[str, PoolLimit] | None = None, aging_s: float = 1800.0) -> None:
        self.pools = dict(pools or {})
        self.aging_s = aging_s

    def decide(self, now: float, queue: Iterable[Request], cluster: Cluster | Booked,
               running: Sequence[Running] = (), quota: QuotaCheck | None = None, *, ordered: bool = False,
               stop_below: tuple[float, float] | None = None) -> Decision:
        """Admit what can go now; the cluster is booked for what is admitted. `cluster`: free capacity, with
        `running` the work that holds the rest; or a `Booked` (both, kept in step by the caller, who `add`s
        what is admitted here: a decision then costs what changed, not the size of the cluster).
        `ordered`: `queue` is in queue order already. `stop_below`: stop as soon as no node has this many CPUs
        free (the fewest any request asks): nothing later could fit, nor backfill; the rest of the queue is
        left out of `waiting`."""
        booked = cluster if isinstance(cluster, Booked) else Booked(cluster, running)
        cluster = booked.cluster
        if stop_below is not None and cluster.full(*stop_below):
            return Decision((), {}, None)
        in_pool = dict(booked.in_pool)
        admitted: list[tuple[Request, Placement]] = []
        reasons: dict[str, Wait] = {}
        # EASY backfill's reservation for the head of the queue, and one more for each urgent (high or
        # critical) node that cannot start: backfill may delay none of them.
        reservations: list[tuple[Request, float, Cluster]] = []  # the node, its start, the cluster then
        # The cluster only fills up while deciding: a shape that did not fit will not fit later in this call.
        no_fit: set[tuple[str | None, float, float, float, bool]] = set()
        ever: dict[tuple[str | None, float, float, float, bool], bool] = {}
        taken_then: list[tuple[Request, Placement]] | None = None  # admitted when `ever` was first asked
        for request in (queue if ordered else order(queue, now, self.aging_s)):
            limit = self.pools.get(request.pool or "")
            if limit is not None and in_pool.get(request.pool, 0) >= limit.max_concurrency:
                reasons[request.key] = Wait(WaitReason.POOL_LIMIT,
                                            f"{request.pool} {in_pool.get(request.pool, 0)}/{limit.max_concurrency}")
                continue
            shape = request.shape
            placement = None if shape in no_fit else cluster.fit(request)
            if placement is None:
                no_fit.add(shape)
                if request.fallback_cpu is not None and now - request.ready_at >= request.fallback_after_s:
                    request, placement = _on_cpu(request, cluster)
            blocking = _blocking(request, placement, now, reservations) if placement is not None else None
            if blocking is not None:
                head, start, _ = blocking
                reasons[request.key] = Wait(WaitReason.RESERVATION, f"would delay {head.key} ({head.priority}), "
                                                                    f"reserved to start by {start:.0f}")
                continue
            held = quota(request) if placement is not None and quota is not None else None
            if held:
                reasons[request.key] = held
                continue
            if placement is not None:
                cluster.take(request, placement)
                admitted.append((request, placement))
                in_pool[request.pool] = in_pool.get(request.pool, 0) + 1
                if stop_below is not None and cluster.full(*stop_below):
                    break
                continue
            if not reservations or (request.priority.rank >= Priority.HIGH.rank
                                    and len(reservations) < MAX_RESERVATIONS):
                shadow = _shadow(request, booked, admitted, now, reservations)
                if shadow is not None:
                    reservations.append((request, *shadow))
                    reasons[request.key] = Wait(WaitReason.NO_CAPACITY,
                                                f"reserved to start by {shadow[0]:.0f}{_fallback_at(request)}")
                    continue
            if shape not in ever:
                taken_then = list(admitted) if taken_then is None else taken_then
                ever[shape] = _ever(request, booked, taken_then)
            detail = ("" if ever[shape] else "no node of its pool can hold it yet") + _fallback_at(request)
            reasons[request.key] = Wait(WaitReason.NO_CAPACITY, detail)
        waiting = {key: Waiting(position, reason) for position, (key, reason) in enumerate(reasons.items(), 1)}
        return Decision(tuple(admitted), waiting,
                        (reservations[0][0].key, reservations[0][1]) if reservations else None)


def _ever(request: Request, booked: Booked, taken: Sequence[tuple[Request, Placement]]) -> bool:
    """Whether `request` fits on the cluster with nothing running but what this decision had admitted by
    then (`taken`): on a node it took from, look at that node; elsewhere, the empty cluster answers."""
    empty = booked.empty((r.cpu, p) for r, p in taken)
    where = empty.where(request)
    touched = {p.node_id for _, p in taken}
    if len(where) > sum(1 for node_id in touched if node_id in where):
        return True
    for node_id in touched:
        if node_id in empty.nodes:
            node = empty.nodes[node_id].clone()
            for r, p in taken:
                if p.node_id == node_id:
                    node.cpu_free -= r.cpu
                    for index, fraction, memory in p.gpu_shares:
                        node.gpus[index].free -= fraction
                        node.gpus[index].free_mem_gb -= memory
            if score(node, request) is not None:
                return True
    return False


def _fallback_at(request: Request) -> str:
    if request.fallback_cpu is None:
        return ""
    return f" (CPU fallback at {request.ready_at + request.fallback_after_s:.0f})"


def _on_cpu(request: Request, cluster: Cluster) -> tuple[Request, Placement | None]:
    """GPU work that has waited out its fallback wait, as CPU work, and where that fits (if anywhere)."""
    on_cpu = replace(request, cpu=request.fallback_cpu or request.cpu, gpu=0.0, gpu_mem_gb=0.0, fallback_cpu=None)
    placement = cluster.fit(on_cpu)
    if placement is None:
        return request, None
    return on_cpu, replace(placement, cpu_fallback=True)


def _shadow(request: Request, booked: Booked, admitted: Sequence[tuple[Request, Placement]], now: float,
            reserved: Sequence[tuple[Request, float, Cluster]] = ()) -> tuple[float, Cluster] | None:
    """When `request` could start if running work ended at its estimates (EASY's shadow time), and the
    cluster as it would be then. Earlier reservations are booked at their starts, until their estimates.
    `request` fits nowhere now (and neither does a reserved head): only a node where something ended
    since can hold it, so each instant looks at the nodes that changed then, not at the whole cluster.
    Once less is left running than ends at the next instant, the cluster then is the empty cluster less
    what still runs: built from `booked.empty()` (and its indexes) instead of giving every node back."""
    future: Cluster | None = None  # copied when first written (copy-on-write: costs the nodes it writes)
    ends_of_admitted = sorted(((now + a.estimate_s, a.cpu, p) for a, p in admitted), key=lambda item: item[0])
    starts = sorted(((start, head) for head, start, _ in reserved), key=lambda item: item[0])
    instants, i, j, k = booked.instants, 0, 0, 0
    left = len(booked)  # running items that have not ended yet in this walk
    ends: list[tuple[float, float, Placement]] = []
    heads: list[tuple[Request, Placement]] = []
    whole = False  # the future is built from the empty cluster: look at every node, by index
    inf = float("inf")
    while True:
        at = min(instants[i] if i < len(instants) else inf,
                 ends_of_admitted[j][0] if j < len(ends_of_admitted) else inf, starts[k][0] if k < len(starts) else inf)
        if at == inf:
            break
        changed: set[str] = set()
        if i < len(instants) and instants[i] == at:  # running work ends: what it holds comes back
            here = booked.ending(at)
            left -= here
            if not whole and left + len(ends_of_admitted) + len(heads) < here:
                future, whole = _from_empty(booked, instants[i + 1:], ends_of_admitted, heads, at), True
            else:
                future = future or booked.cluster.copy()
                for node_id, freed in booked.freed(at).items():
                    give_freed(future, node_id, freed)
                    changed.add(node_id)
            i += 1
        future = future or booked.cluster.copy()
        while j < len(ends_of_admitted) and ends_of_admitted[j][0] == at:  # so does work admitted just now
            future.give(ends_of_admitted[j][1], ends_of_admitted[j][2])
            changed.add(ends_of_admitted[j][2].node_id)
            j += 1
        while k < len(starts) and starts[k][0] == at:  # a reservation starts (after what ends at that instant)
            head = starts[k][1]
            placement = future.fit(head)
            if placement is None:
                return None  # an earlier reservation does not fit where it was planned: no promise for this one
            future.take(head, placement)
            ends.append((at + head.estimate_s, head.cpu, placement))
            heads.append((head, placement))
            changed.add(placement.node_id)
            k += 1
        # reserved work that ended by now still counts: a safe promise
        if whole and future.fit(request) is not None or not whole and any(
                node_id in future.nodes and score(future.nodes[node_id], request) is not None for node_id in changed):
            return max(at, now), future
    for at, cpu, placement in sorted(ends, key=lambda item: item[0]):
        assert future is not None  # a reservation started in it
        future.give(cpu, placement)
        if score(future.nodes[placement.node_id], request) is not None:
            return max(at, now), future
    return None


def _from_empty(booked: Booked, later: Sequence[float], admitted: Sequence[tuple[float, float, Placement]],
                heads: Sequence[tuple[Request, Placement]], at: float) -> Cluster:
    """The cluster after instant `at`'s ends: nothing running (`booked.empty()`), less what ends later and
    the reservations started by then."""
    future = booked.empty((cpu, placement) for _, cpu, placement in admitted).copy()  # `admitted`: all of them
    for instant in later:
        for node_id, freed in booked.freed(instant).items():
            give_freed(future, node_id, freed, -1.0)
    for end, cpu, placement in admitted:
        if end > at:
            future.give(-cpu, replace(placement, gpu_shares=tuple((g, -f, -m) for g, f, m in placement.gpu_shares)))
    for head, placement in heads:
        future.take(head, placement)
    return future


def _blocking(request: Request, placement: Placement, now: float,
              reservations: Sequence[tuple[Request, float, Cluster]]) -> tuple[Request, float, Cluster] | None:
    """The first reservation that `request`, started now, would delay; None if it delays none (it is
    then booked in each reservation's future cluster where it still runs at that start)."""
    taken: list[Cluster] = []
    for reservation in reservations:
        head, start, future = reservation
        if now + request.estimate_s <= start + EPSILON:
            continue
        future.take(request, placement)  # free now means free then: it still holds these at the start
        if future.fit(head) is None:
            future.give(request.cpu, placement)
            for earlier in taken:
                earlier.give(request.cpu, placement)
            return reservation
        taken.append(future)
    return None


def choose_victims(request: Request, cluster: Cluster, running: Sequence[Running], now: float
                   ) -> list[Running] | None:
    """The preemptible, lower-priority running work whose release lets `request` start, losing the
    fewest GPU-seconds (CPU-seconds break ties); None if no such set exists."""
    best: tuple[tuple[float, float], list[Running]] | None = None
    candidates = [r for r in running if r.preemptible and r.priority.rank < request.priority.rank]
    for node_id in {r.placement.node_id for r in candidates}:
        trial = cluster.copy()
        chosen: list[Running] = []
        on_node = sorted((r for r in candidates if r.placement.node_id == node_id),
                         key=lambda r: (r.gpu * (now - r.started_at), r.cpu * (now - r.started_at)))
        for victim in on_node:
            trial.give(victim.cpu, victim.placement)
            chosen.append(victim)
            if trial.fit(request) is not None:
                lost = (sum(v.gpu * (now - v.started_at) for v in chosen),
                        sum(v.cpu * (now - v.started_at) for v in chosen))
                if best is None or lost < best[0]:
                    best = (lost, list(chosen))
                break
    return best[1] if best else None


__all__ = ["PRIORITIES", "AdmissionPolicy", "Booked", "Cluster", "Decision", "Gpu", "Node", "Placement", "PoolLimit",
           "Request", "Running", "Waiting", "choose_victims", "order"]
