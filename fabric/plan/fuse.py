"""Chain fusion: which runs of plan nodes go to Ray as one task (pure; Dask fuses, Spark pipelines stages).

A chain is a path a → b → … where each link is the only edge out of its source and the only edge into its
target. Its members keep their own state, attempts, logs and outputs (the fused task runs them one after
another and reports each); fusion only saves Ray's per-task cost, which dominates small nodes."""

from __future__ import annotations

from collections.abc import Mapping

from fabric.plan.model import NodePlan

# Kinds that place their own Ray workers (Train, Tune, Ray jobs) or register preemption handlers: never fused.
NEVER_FUSED_KINDS = frozenset({"train", "ray_job", "tune", "serve", "llm_generate", "finetune", "llm_serve"})
MAX_CHAIN = 1000  # members per fused task: its return values are one per member's out


def fusible(node: NodePlan, fuse: bool = True) -> bool:
    """May this node share a Ray task at all? Not when the spec says `fuse: false`, nor for what needs a task of
    its own: a cache check (before it runs), a GPU or gang of workers, GPU-first work, its own deadline (a
    timeout kills the Ray task), preemptible work (`qos: spot_ok`: preemption stops the task) or a self-placing
    kind."""
    return fuse and _shareable(node) and node.map is None and node.map_parent is None


PACK_SPREAD = 32  # a batch of map children goes as at least this many Ray tasks (when it has that many children)
MAX_PACK = 64  # children per Ray task at most


def packable(node: NodePlan) -> bool:
    """May this node share a Ray task with its ready siblings (each still its own attempt, log and outputs)? A map
    child unless its map node says `fuse: false` (long children on a large cluster: a pack runs its children one
    after another); a plain node outside fused chains that decides no condition, is no exit hook and does not
    say `fuse: false` (plan/compile.py). On the same terms as fusion: no GPU, gang,
    deadline, preemption or self-placing kind. A cache node may: it is dispatched only after its cache check
    missed (run.py never dispatches a held cache node)."""
    return node.packed and node.map is None and _shareable(node, cache_checked=True)


def _shareable(node: NodePlan, cache_checked: bool = False) -> bool:
    unit = node.unit
    return ((cache_checked or not node.cache) and unit.num_gpus == 0 and unit.workers == 1
            and unit.group_strategy is None and unit.fallback_cpus is None and node.max_runtime is None
            and node.qos != "spot_ok" and node.kind not in NEVER_FUSED_KINDS)


def same_task(a: NodePlan, b: NodePlan) -> bool:
    """Could `a` and `b` run in one Ray task: the same resources (pool included), runtime_env and scheduling."""
    return (a.unit == b.unit and a.pool == b.pool and a.env == b.env and a.image == b.image
            and a.priority == b.priority and a.qos == b.qos)


def fused_predecessors(order: tuple[str, ...], nodes: Mapping[str, NodePlan],
                       fuse: Mapping[str, bool] | None = None) -> dict[str, str]:
    """For each node that continues a fused chain, the member before it (the chain's head has none).

    `fuse` holds each node's spec flag (default true). A boundary with fan-out > 1 or fan-in > 1 ends a chain,
    so every member but the head has exactly one upstream, its predecessor, and every member but the last has
    exactly one downstream, its successor."""
    flags = fuse or {}
    ok = {n: fusible(nodes[n], flags.get(n, True)) for n in order}
    previous: dict[str, str] = {}
    length: dict[str, int] = {}
    for node_id in order:
        node = nodes[node_id]
        length[node_id] = 1
        if not ok[node_id] or len(node.upstream) != 1:
            continue
        parent = nodes[node.upstream[0]]
        if (ok[parent.node_id] and parent.downstream == (node_id,) and same_task(parent, node)
                and length[parent.node_id] < MAX_CHAIN):
            previous[node_id] = parent.node_id
            length[node_id] = length[parent.node_id] + 1
    return previous


def chains(order: tuple[str, ...], previous: Mapping[str, str]) -> list[tuple[str, ...]]:
    """The fused chains (two members or more), each in run order, in plan order of their heads."""
    successor = {p: n for n, p in previous.items()}
    out = []
    for node_id in order:
        if node_id in previous or node_id not in successor:
            continue
        chain = [node_id]
        while chain[-1] in successor:
            chain.append(successor[chain[-1]])
        out.append(tuple(chain))
    return out
