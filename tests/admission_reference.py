"""The admission policy as it was before its indexes (a scan of every node per fit, a full copy of the
cluster per reservation): the straightforward reference that tests/unit/test_admission_equivalence.py
compares `fabric.schedule.admission` with. Not used by fabric."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from fabric.schedule.admission import Decision, Gpu, Node, Placement, PoolLimit, Request, Running, Waiting, order
from fabric.spec import Priority
from fabric.states import Wait, WaitReason

MAX_RESERVATIONS = 8  # urgent nodes holding a reservation at once (each costs a cluster copy)
EPSILON = 1e-9


class Cluster:
    """Free capacity per node and per GPU; `fit` chooses best-fit, `take`/`give` book it."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes = {n.node_id: n for n in nodes}

    def copy(self) -> Cluster:
        # By hand: deepcopy took 300 ms for 1,000 nodes of 8 GPUs, this takes a few.
        return Cluster(Node(n.node_id, n.cpu_free, [Gpu(g.index, g.free, g.free_mem_gb) for g in n.gpus], n.pool,
                            n.spot, n.families) for n in self.nodes.values())

    def fit(self, request: Request) -> Placement | None:
        best: tuple[tuple[float, ...], Placement] | None = None
        for node in self.nodes.values():
            if node.cpu_free + EPSILON < request.cpu or (
                    request.pool is not None and node.pool != request.pool and request.pool not in node.families):
                continue
            if node.spot and not request.spot_ok and (request.pool is None or request.pool != node.pool):
                continue  # on_demand work never lands on spot capacity, unless it names that spot pool itself
            found = _fit_on(node, request)
            if found is None:
                continue
            # spot_ok batch work prefers spot nodes, keeping on-demand capacity for latency-bound work
            score = (float(request.spot_ok and not node.spot), *found[0])
            if best is None or score < best[0]:
                best = (score, found[1])
                if score[0] == 0 and found[0][0] <= EPSILON:  # nothing fits tighter than a perfect fit
                    break
        return best[1] if best else None

    def take(self, request: Request, placement: Placement) -> None:
        node = self.nodes[placement.node_id]
        node.cpu_free -= request.cpu
        for index, fraction, memory in placement.gpu_shares:
            node.gpus[index].free -= fraction
            node.gpus[index].free_mem_gb -= memory

    def give(self, cpu: float, placement: Placement) -> None:
        node = self.nodes.get(placement.node_id)
        if node is None:  # the node is gone (a spot reclaim): nothing comes back
            return
        node.cpu_free += cpu
        for index, fraction, memory in placement.gpu_shares:
            node.gpus[index].free += fraction
            node.gpus[index].free_mem_gb += memory

    def full(self, cpu: float, gpu: float = 0.0) -> bool:
        """No node has `cpu` CPUs and a GPU with `gpu` free (every request asks at least that much: none
        can be placed)."""
        return all(node.cpu_free + EPSILON < cpu
                   or (gpu > 0 and not any(g.free + EPSILON >= min(gpu, 1.0) for g in node.gpus))
                   for node in self.nodes.values())

    def emptied(self, running: Sequence[Running]) -> Cluster:
        """This cluster with every running item gone: what could ever fit."""
        empty = self.copy()
        for item in running:
            empty.give(item.cpu, item.placement)
        return empty


def _fit_on(node: Node, request: Request) -> tuple[tuple[float, ...], Placement] | None:
    """Best fit on one node, with a score (lower is better) that packs: the tightest GPU for a share,
    the node with the fewest whole free GPUs for whole GPUs, GPU-less nodes first for CPU work."""
    if request.gpu <= 0:
        return (float(len(node.gpus) > 0), node.cpu_free - request.cpu), Placement(node.node_id)
    if request.gpu < 1:
        best: tuple[float, int] | None = None
        for gpu in node.gpus:
            if gpu.free + EPSILON >= request.gpu and gpu.free_mem_gb + EPSILON >= request.gpu_mem_gb:
                leftover = gpu.free - request.gpu
                if best is None or leftover < best[0]:
                    best = (leftover, gpu.index)
        if best is None:
            return None
        share = ((best[1], request.gpu, request.gpu_mem_gb),)
        return (best[0], node.cpu_free), Placement(node.node_id, share)
    whole = [g for g in node.gpus if g.free >= 1 - EPSILON and g.free_mem_gb + EPSILON >= request.gpu_mem_gb]
    count = int(round(request.gpu))
    if len(whole) < count:
        return None
    shares = tuple((g.index, 1.0, request.gpu_mem_gb) for g in whole[:count])
    return (float(len(whole) - count), node.cpu_free), Placement(node.node_id, shares)


QuotaCheck = Callable[[Request], Wait | None]


class AdmissionPolicy:
    def __init__(self, pools: Mapping[str, PoolLimit] | None = None, aging_s: float = 1800.0) -> None:
        self.pools = dict(pools or {})
        self.aging_s = aging_s

    def decide(self, now: float, queue: Iterable[Request], cluster: Cluster, running: Sequence[Running],
               quota: QuotaCheck | None = None, *, ordered: bool = False,
               stop_below: tuple[float, float] | None = None) -> Decision:
        """Admit what can go now; `cluster` is booked for what is admitted. `ordered`: `queue` is in queue order
        already. `stop_below`: stop as soon as no node has this many CPUs free (the fewest any request asks):
        nothing later could fit, nor backfill; the rest of the queue is left out of `waiting`."""
        if stop_below is not None and cluster.full(*stop_below):
            return Decision((), {}, None)
        in_pool: dict[str | None, int] = {}
        for item in running:
            in_pool[item.pool] = in_pool.get(item.pool, 0) + 1
        admitted: list[tuple[Request, Placement]] = []
        reasons: dict[str, Wait] = {}
        # EASY backfill's reservation for the head of the queue, and one more for each urgent (high or
        # critical) node that cannot start: backfill may delay none of them.
        reservations: list[tuple[Request, float, Cluster]] = []  # the node, its start, the cluster then
        # The cluster only fills up while deciding: a shape that did not fit will not fit later in this call.
        no_fit: set[tuple[str | None, float, float, float, bool]] = set()
        ever: dict[tuple[str | None, float, float, float, bool], bool] = {}
        empty: Cluster | None = None
        for request in (queue if ordered else order(queue, now, self.aging_s)):
            limit = self.pools.get(request.pool or "")
            if limit is not None and in_pool.get(request.pool, 0) >= limit.max_concurrency:
                reasons[request.key] = Wait(WaitReason.POOL_LIMIT,
                                            f"{request.pool} {in_pool[request.pool]}/{limit.max_concurrency}")
                continue
            shape = (request.pool, request.cpu, request.gpu, request.gpu_mem_gb, request.spot_ok)
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
                shadow = _shadow(request, cluster, running, admitted, now, reservations)
                if shadow is not None:
                    reservations.append((request, *shadow))
                    reasons[request.key] = Wait(WaitReason.NO_CAPACITY,
                                                f"reserved to start by {shadow[0]:.0f}{_fallback_at(request)}")
                    continue
            if shape not in ever:
                empty = empty or cluster.emptied(running)
                ever[shape] = empty.fit(request) is not None
            detail = ("" if ever[shape] else "no node of its pool can hold it yet") + _fallback_at(request)
            reasons[request.key] = Wait(WaitReason.NO_CAPACITY, detail)
        waiting = {key: Waiting(position, reason) for position, (key, reason) in enumerate(reasons.items(), 1)}
        return Decision(tuple(admitted), waiting,
                        (reservations[0][0].key, reservations[0][1]) if reservations else None)


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


def _shadow(request: Request, cluster: Cluster, running: Sequence[Running],
            admitted: Sequence[tuple[Request, Placement]], now: float,
            reserved: Sequence[tuple[Request, float, Cluster]] = ()) -> tuple[float, Cluster] | None:
    """When `request` could start if running work ended at its estimates (EASY's shadow time), and the
    cluster as it would be then. Earlier reservations are booked at their starts, until their estimates."""
    future = cluster.copy()
    events = sorted([(r.ends_at, 0, r.cpu, r.placement, None) for r in running]
                    + [(now + a.estimate_s, 0, a.cpu, p, None) for a, p in admitted]
                    + [(start, 1, head.cpu, None, head) for head, start, _ in reserved], key=lambda item: item[:2])
    ends: list[tuple[float, float, Placement]] = []
    for index, (at, _, cpu, placement, head) in enumerate(events):
        if placement is not None:  # a running or admitted node ends: its CPUs come back
            future.give(cpu, placement)
        elif head is not None:  # a reservation starts
            booked = future.fit(head)
            if booked is None:
                return None  # an earlier reservation does not fit where it was planned: no promise for this one
            future.take(head, booked)
            ends.append((at + head.estimate_s, head.cpu, booked))
        if index + 1 < len(events) and events[index + 1][0] <= at:
            continue  # everything that happens at this instant first (a reserved start takes what ends then)
        if future.fit(request) is not None:  # reserved work that ended by now still counts: a safe promise
            return max(at, now), future
    for at, cpu, placement in sorted(ends, key=lambda item: item[0]):
        future.give(cpu, placement)
        if future.fit(request) is not None:
            return max(at, now), future
    return None


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


__all__ = ["AdmissionPolicy", "Cluster"]
