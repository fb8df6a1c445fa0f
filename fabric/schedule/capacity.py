"""Free capacity, pure: nodes and GPUs, requests and placements, and the cluster that finds a best fit by index.

A `Cluster` keeps one lazily built index per request shape (what `fit` depends on): the nodes where that
shape fits, by score. A `take` or `give` marks its node stale in each index, and the next `fit` re-scores
only the stale nodes, so a fit costs O(nodes changed) once an index exists, not O(nodes). `copy` is
copy-on-write: the nodes are shared until one side writes to one, and a shape known to fit nowhere at
copy time is looked for only among the nodes the copy has written since (a future cluster of EASY
backfill: nothing new fits except where running work ended).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from fabric.spec import Priority

EPSILON = 1e-9
MAX_INDEXES = 64  # shapes indexed at once per cluster (the least recently used index goes first)

Shape = tuple[str | None, float, float, float, bool]  # pool, cpu, gpu, gpu_mem_gb, spot_ok: all `fit` reads


@dataclass(frozen=True)
class Request:
    """A ready node asking to run."""

    key: str
    team: str
    priority: Priority = Priority.NORMAL
    ready_at: float = 0.0
    cpu: float = 1.0
    gpu: float = 0.0  # a fraction (< 1) shares one GPU; a whole number needs that many free GPUs on one node
    gpu_mem_gb: float = 0.0  # per GPU: never two shares on one GPU whose hints exceed its memory
    pool: str | None = None
    estimate_s: float = 3600.0  # the declared max_runtime: EASY backfill's run-time estimate
    preemptible: bool = False  # may be stopped and requeued for more urgent work once running
    spot_ok: bool = False  # qos spot_ok: may run on spot capacity, and prefers it; otherwise never there
    fallback_cpu: float | None = None  # GPU first; after `fallback_after_s` waiting, this many CPUs will do
    fallback_after_s: float = 300.0

    def __post_init__(self) -> None:  # the boundary: a plain string from a caller becomes the enum once
        if not isinstance(self.priority, Priority):
            object.__setattr__(self, "priority", Priority(self.priority))

    @property
    def shape(self) -> Shape:
        return (self.pool, self.cpu, self.gpu, self.gpu_mem_gb, self.spot_ok)


@dataclass
class Gpu:
    index: int
    free: float = 1.0
    free_mem_gb: float = 80.0


@dataclass
class Node:
    node_id: str
    cpu_free: float
    gpus: list[Gpu] = field(default_factory=list)
    pool: str | None = None
    spot: bool = False  # preemptible capacity (a spot pool)
    families: frozenset[str] = frozenset()  # queue families it also runs (their pools' resources it advertises)

    def clone(self) -> Node:
        return Node(self.node_id, self.cpu_free, [Gpu(g.index, g.free, g.free_mem_gb) for g in self.gpus], self.pool,
                    self.spot, self.families)


@dataclass(frozen=True)
class Placement:
    node_id: str
    gpu_shares: tuple[tuple[int, float, float], ...] = ()  # (gpu index, fraction, memory GiB)
    cpu_fallback: bool = False  # it waited too long for a GPU: it runs on CPUs only


Score = tuple[float, ...]
_SEQ = itertools.count()  # a tie-break after the node's rank: entries of one node never compare further
Entry = tuple[Score, int, int, str, Placement]  # score, the node's rank (its place), a tie-break, node id, where


def score(node: Node, request: Request) -> tuple[Score, Placement, bool] | None:
    """Where `request` fits best on `node`, its score (lower is better) and whether nothing fits tighter
    (a perfect fit, where a scan in node order stops); None when it does not fit there."""
    if node.cpu_free + EPSILON < request.cpu or (
            request.pool is not None and node.pool != request.pool and request.pool not in node.families):
        return None
    if node.spot and not request.spot_ok and (request.pool is None or request.pool != node.pool):
        return None  # on_demand work never lands on spot capacity, unless it names that spot pool itself
    found = _fit_on(node, request)
    if found is None:
        return None
    # spot_ok batch work prefers spot nodes, keeping on-demand capacity for latency-bound work
    preference = float(request.spot_ok and not node.spot)
    return (preference, *found[0]), found[1], preference == 0 and found[0][0] <= EPSILON


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


def best_of(nodes: Iterable[tuple[int, Node]], request: Request) -> Placement | None:
    """A scan in node order, as every index answers: the first perfect fit, else the lowest score (the
    first node on a tie)."""
    best: tuple[Score, Placement] | None = None
    for _, node in sorted(nodes, key=lambda item: item[0]):
        found = score(node, request)
        if found is None:
            continue
        if best is None or found[0] < best[0]:
            best = (found[0], found[1])
        if found[2]:
            return found[1]
    return best[1] if best else None


class _Index:
    """The nodes where one shape fits, by score, kept in step with the cluster through `stale`."""

    def __init__(self, evaluate: Callable[[Node], tuple[Score, Placement, bool] | None], stale: set[str]) -> None:
        self.evaluate = evaluate
        self.stale = stale  # nodes whose score is not known (all, at first)
        self.current: dict[str, Entry] = {}  # node id -> its valid entry, for nodes where it fits
        self.heap: list[Entry] = []
        self.perfect: list[tuple[int, int, Entry]] = []  # by rank: a scan in node order stops at the first
        self._ordered: tuple[list[Entry], list[Entry]] | None = None

    def refresh(self, nodes: dict[str, Node], rank: dict[str, int]) -> None:
        if self.stale:
            self._ordered = None
        for node_id in self.stale:
            node = nodes.get(node_id)
            found = self.evaluate(node) if node is not None else None
            if found is None:
                self.current.pop(node_id, None)
                continue
            entry = (found[0], rank[node_id], next(_SEQ), node_id, found[1])
            self.current[node_id] = entry
            heapq.heappush(self.heap, entry)
            if found[2]:
                heapq.heappush(self.perfect, (entry[1], entry[2], entry))
        self.stale.clear()
        if len(self.heap) > 2 * len(self.current) + 64:  # stale entries pile up: start again from the valid
            self.heap = list(self.current.values())
            heapq.heapify(self.heap)
            self.perfect = [e for e in self.perfect if self.current.get(e[2][3]) is e[2]]
            heapq.heapify(self.perfect)

    def ordered(self) -> tuple[list[Entry], list[Entry]]:
        """Its valid entries by score, and its perfect ones by rank (kept while it does not change: an index
        of a frozen cluster, read by every copy's `_Overlay`)."""
        if self._ordered is None:
            self._ordered = (sorted(self.current.values()),
                             [e for _, _, e in sorted(p for p in self.perfect if self.current.get(p[2][3]) is p[2])])
        return self._ordered

    def best(self) -> Placement | None:
        perfect, heap, current = self.perfect, self.heap, self.current
        while perfect and current.get(perfect[0][2][3]) is not perfect[0][2]:
            heapq.heappop(perfect)
        if perfect:
            return perfect[0][2][4]
        while heap and current.get(heap[0][3]) is not heap[0]:
            heapq.heappop(heap)
        return heap[0][4] if heap else None


class _Overlay:
    """A copy's index over its frozen source's: the source's entries, less the nodes the copy wrote, which it
    scores itself. A fit costs the nodes written (and those skipped), not a copy of the source's index."""

    def __init__(self, evaluate: Callable[[Node], tuple[Score, Placement, bool] | None], stale: set[str],
                 base: _Index) -> None:
        self.evaluate = evaluate
        self.stale = stale
        self.base = base
        self.mine: dict[str, tuple[Entry, bool] | None] = {}  # written node -> its entry, perfect (None: no fit)

    def refresh(self, nodes: dict[str, Node], rank: dict[str, int]) -> None:
        for node_id in self.stale:
            node = nodes.get(node_id)
            found = self.evaluate(node) if node is not None else None
            self.mine[node_id] = None if found is None else (
                (found[0], rank[node_id], next(_SEQ), node_id, found[1]), found[2])
        self.stale.clear()

    @property
    def current(self) -> dict[str, Entry]:  # a full view (rarely asked: O(n))
        merged = {k: e for k, e in self.base.current.items() if k not in self.mine}
        merged.update({k: m[0] for k, m in self.mine.items() if m is not None})
        return merged

    def best(self) -> Placement | None:
        by_score, perfect = self.base.ordered()
        mine = [m for m in self.mine.values() if m is not None]
        ours = min((e for e, p in mine if p), key=lambda e: e[1], default=None)
        theirs = next((e for e in perfect if e[3] not in self.mine), None)
        if ours is not None or theirs is not None:
            return min((e for e in (ours, theirs) if e is not None), key=lambda e: e[1])[4]
        ours = min((e for e, _ in mine), default=None)
        theirs = next((e for e in by_score if e[3] not in self.mine), None)
        candidates = [e for e in (ours, theirs) if e is not None]
        return min(candidates)[4] if candidates else None


class Cluster:
    """Free capacity per node and per GPU; `fit` chooses best-fit, `take`/`give` book it."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes = {n.node_id: n for n in nodes}
        self._rank = {node_id: i for i, node_id in enumerate(self.nodes)}
        self._mine: set[str] | None = None  # nodes not shared with a copy (None: all of them)
        self._indexes: dict[object, _Index | _Overlay] = {}
        self._nowhere: frozenset[Shape] = frozenset()  # a copy's: shapes that fit nowhere it did not write
        self._written: set[str] | None = None  # a copy's: the nodes it wrote
        self._source: tuple[Cluster, int] | None = None  # a copy's: what it copied, and that one's writes then
        self._writes = 0
        self.frozen = False  # never written again: its copies read its indexes instead of copying them

    def copy(self) -> Cluster:
        """Copy-on-write: O(1) per node (a dict copy), a node is cloned by whichever side writes to it first."""
        other = Cluster.__new__(Cluster)
        other.nodes = dict(self.nodes)
        other._rank = self._rank
        other._indexes = {}
        other._nowhere = self._fits_nowhere()
        other._written = set()
        other._source, other._writes, other.frozen = (self, self._writes), 0, False
        self._mine, other._mine = set(), set()
        return other

    def _fits_nowhere(self) -> frozenset[Shape]:
        """The shapes known to fit on no node now (an index that holds no node)."""
        shapes = set(self._nowhere) if not self._written else set()  # a copy of a copy
        for shape, index in self._indexes.items():
            if isinstance(shape, tuple) and len(shape) == 5:
                index.refresh(self.nodes, self._rank)
                if not index.current:
                    shapes.add(shape)
        return frozenset(shapes)

    def _write(self, node_id: str) -> Node:
        if self.frozen:
            raise RuntimeError("a frozen cluster is read only (its copies read its indexes)")
        node = self.nodes[node_id]
        if self._mine is not None and node_id not in self._mine:
            node = self.nodes[node_id] = node.clone()
            self._mine.add(node_id)
        if self._written is not None:
            self._written.add(node_id)
        self._writes += 1
        for index in self._indexes.values():
            index.stale.add(node_id)
        return node

    def _index(self, key: object, evaluate: Callable[[Node], tuple[Score, Placement, bool] | None]
               ) -> _Index | _Overlay:
        index = self._indexes.pop(key, None)
        if index is None:
            if len(self._indexes) >= MAX_INDEXES:
                del self._indexes[next(iter(self._indexes))]
            index = self._inherit(key, evaluate) or _Index(evaluate, set(self.nodes))
        self._indexes[key] = index  # the most recently used last
        index.refresh(self.nodes, self._rank)
        return index

    def _inherit(self, key: object, evaluate: Callable[[Node], tuple[Score, Placement, bool] | None]
                 ) -> _Index | _Overlay | None:
        """A copy's index taken from the cluster it copied, when that one has not changed since: O(n) at C
        speed (list and dict copies) instead of scoring every node again; the nodes it wrote are stale."""
        if self._source is None or self._written is None:
            return None
        source, writes = self._source
        if source._writes != writes:
            return None
        parent = source._index(key, evaluate)
        if isinstance(parent, _Overlay):  # a copy of a copy of a frozen cluster: scored afresh
            return None
        if source.frozen:
            return _Overlay(evaluate, set(self._written), parent)
        index = _Index(evaluate, set(self._written))
        index.current, index.heap, index.perfect = dict(parent.current), list(parent.heap), list(parent.perfect)
        return index

    def fit(self, request: Request) -> Placement | None:
        shape = request.shape
        if self._few_written(shape):  # only where this copy wrote can it fit
            return best_of(((self._rank[n], self.nodes[n]) for n in self._written or ()), request)
        return self._index(shape, lambda node: score(node, request)).best()

    def _few_written(self, shape: Shape) -> bool:
        """`shape` fits only where this copy wrote, and that is few enough nodes to look at each one."""
        return shape in self._nowhere and len(self._written or ()) * 8 <= len(self.nodes) + 64

    def where(self, request: Request) -> Collection[str]:
        """The nodes where `request` fits."""
        if self._few_written(request.shape):
            return [n for n in self._written or () if score(self.nodes[n], request) is not None]
        return self._index(request.shape, lambda node: score(node, request)).current.keys()

    def take(self, request: Request, placement: Placement) -> None:
        node = self._write(placement.node_id)
        node.cpu_free -= request.cpu
        for index, fraction, memory in placement.gpu_shares:
            node.gpus[index].free -= fraction
            node.gpus[index].free_mem_gb -= memory

    def give(self, cpu: float, placement: Placement) -> None:
        if placement.node_id not in self.nodes:  # the node is gone (a spot reclaim): nothing comes back
            return
        node = self._write(placement.node_id)
        node.cpu_free += cpu
        for index, fraction, memory in placement.gpu_shares:
            node.gpus[index].free += fraction
            node.gpus[index].free_mem_gb += memory

    def full(self, cpu: float, gpu: float = 0.0) -> bool:
        """No node has `cpu` CPUs and a GPU with `gpu` free (every request asks at least that much: none
        can be placed)."""
        def room(node: Node) -> tuple[Score, Placement, bool] | None:
            if node.cpu_free + EPSILON < cpu or (
                    gpu > 0 and not any(g.free + EPSILON >= min(gpu, 1.0) for g in node.gpus)):
                return None
            return (), Placement(node.node_id), False
        return self._index(("full", cpu, gpu), room).best() is None


__all__ = ["EPSILON", "Cluster", "Gpu", "Node", "Placement", "Request", "Shape", "best_of", "score"]
