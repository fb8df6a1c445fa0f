"""The execution plan: frozen, Ray-agnostic descriptions of what each node needs and feeds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fabric.spec import Priority

RESULT_SLOT = "result"  # the return value of a node that declares no outs


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    backoff_sec: float = 0.0
    backoff_factor: float = 2.0
    max_backoff_sec: float = 600.0

    def delay_after(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt `failed_attempt` (1-based) failed: exponential, capped."""
        delay = self.backoff_sec * self.backoff_factor ** max(failed_attempt - 1, 0)
        return min(delay, self.max_backoff_sec)


@dataclass(frozen=True)
class ResourceUnit:
    """Resources of one node in the units Ray schedules by (memory in bytes, custom resources)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    custom: Mapping[str, float] = field(default_factory=dict)
    workers: int = 1  # resources above are per worker; more than one runs in a placement group
    placement: str | None = None  # the placement group's strategy, when it has one
    fallback_cpus: float | None = None  # GPU first, else this many CPUs and no GPU ...
    fallback_after_s: float | None = None  # ... once it has waited this long for a GPU

    def key(self) -> tuple[Any, ...]:
        return (self.num_cpus, self.num_gpus, self.memory, tuple(sorted(self.custom.items())), self.workers,
                self.placement, self.fallback_cpus)

    @property
    def group_strategy(self) -> str | None:
        """Its placement group's strategy, or None for a plain task: several workers get a group (PACK
        unless told), and so does one worker of several whole GPUs (STRICT_PACK: all on one node)."""
        if self.workers > 1:
            return self.placement or "PACK"
        if self.num_gpus > 1 or self.placement:
            return self.placement or "STRICT_PACK"
        return None


@dataclass(frozen=True)
class InputWire:
    """`name` of this node's input is the `out` of node `producer`."""

    name: str
    producer: str
    out: str


@dataclass(frozen=True)
class MapPlan:
    """A map node's fan-out (spec `map:`), and what each of its children gets: timeout and retries are theirs."""

    over: str
    max_parallel: int | None
    min_success_ratio: float | None
    batch_size: int | None
    max_runtime: float | None
    retry: RetryPolicy
    cache: bool = False  # `cache: true` on the map node: each child is a cache node (the map node never is)
    cache_shared: bool = False  # `cache: shared`: the children's entries are shared between teams (a grant)
    pack: bool = True  # its children may share Ray tasks (plan/fuse.py packable); the spec's `fuse: false` says no


@dataclass(frozen=True)
class NodePlan:
    node_id: str
    kind: str
    params: Mapping[str, Any]
    entrypoint: str | None
    env: Mapping[str, str]
    image: str | None
    inputs: tuple[InputWire, ...]
    outs: tuple[str, ...]
    upstream: tuple[str, ...]
    downstream: tuple[str, ...]
    unit: ResourceUnit
    max_runtime: float | None
    retry: RetryPolicy
    priority: Priority  # one enum, from the spec to admission and quota
    qos: str | None
    pool: str | None
    cache: bool
    content_hash: str
    digest_outputs: bool = False  # a cache key reads its outputs (it is cached, or a consumer is)
    cache_shared: bool = False  # `cache: shared`: its entries are shared between teams (a grant), not its team's
    fused_after: str | None = None  # the member before it in its fused chain (plan/fuse.py): one Ray task for both
    when: str | None = None  # its condition (spec/expr.py); the values it reads come as inputs named "?<key>"
    when_params: Mapping[str, Any] = field(default_factory=dict)  # the pipeline params its condition reads
    on_skipped: str = "skip"  # an upstream node SKIPPED: "skip" this one too, or "run" it without that input
    on_exit: str | None = None  # an exit hook: "always", "success" or "failure" (schedule/exits.py runs it)
    map: MapPlan | None = None  # a map node: it expands into children at run time (plan/expand.py)
    map_parent: str | None = None  # a map's child: its map node; it joins plan.nodes (never plan.order) when expanded
    batch_over: str | None = None  # a batched child: its input of this name is a list, the function runs per item
    item_digest: str | None = None  # a map child: its item's (or batch's) content hash, its cache key's input `over`
    packed: bool = False  # may share a Ray task with ready siblings (plan/fuse.py packable; `fuse: false` says no)
    after_map: bool = False  # it reads a map node's outputs: they exist only once every child ended (no early dispatch)

    @property
    def result_slots(self) -> tuple[str, ...]:
        """The names of the values the node returns: its outs, or the single implicit `result`."""
        return self.outs or (RESULT_SLOT,)

    @property
    def dispatch_early(self) -> bool:
        """May it go to Ray before its upstream ends (its task waits there on their outputs)? Not a cache
        node, which waits for its cache check, nor a gang, whose placement group would hold its resources
        all that time, perhaps the very ones its upstream needs. Nor an exit hook: it waits for the run's end. Nor
        a node with an edge that carries no data (only its data makes its Ray task wait): it runs after that
        upstream succeeded, as the edge says (a fused chain's members run in order in one task anyway)."""
        ordered_only = self.fused_after is None and not set(self.upstream) <= {w.producer for w in self.inputs}
        return (not self.cache and self.unit.group_strategy is None and self.on_exit is None and self.map is None
                and not self.after_map  # a map node counts its items first; its readers wait for its gather
                and not ordered_only)


@dataclass(frozen=True)
class ExecutionPlan:
    pipeline_id: str
    plan_hash: str
    order: tuple[str, ...]
    nodes: Mapping[str, NodePlan]
    max_runtime: float | None
    priority: Priority  # one enum, from the spec to admission and quota
    labels: Mapping[str, str]
    secrets_scope: tuple[str, ...] = ()  # names only; not part of plan_hash (the request hash covers it)
    params: Mapping[str, Any] = field(default_factory=dict)  # the pipeline params' resolved values, by name

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if not self.nodes[n].downstream)

    def consumed_outs(self) -> dict[str, tuple[str, ...]]:
        """For each node, the outs that some other node reads: what must survive a restart."""
        consumed: dict[str, dict[str, None]] = {n: {} for n in self.order}  # ordered sets
        for node_id in self.order:
            for wire in self.nodes[node_id].inputs:
                consumed[wire.producer][wire.out] = None
        return {n: tuple(outs) for n, outs in consumed.items()}

    def persisted_outs(self, all_consumed: bool = True) -> dict[str, tuple[str, ...]]:
        """The outs written to the artifact store on success: the consumed ones (when `all_consumed`, so a
        resumed run reloads them) and every out of a `cache: true` node (a later run reuses them)."""
        consumed = self.consumed_outs() if all_consumed else {n: () for n in self.order}
        return {n: self.nodes[n].result_slots if self.nodes[n].cache else outs for n, outs in consumed.items()}

    def descendants(self, node_id: str) -> list[str]:
        """Every node reachable from `node_id`, in plan order."""
        seen: set[str] = set()
        stack = list(self.nodes[node_id].downstream)
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.nodes[current].downstream)
        return [n for n in self.order if n in seen]
