"""A map node's plan, and its children's once its items are known: `node[i]`, each a NodePlan of its own."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING

from fabric.plan.model import InputWire, MapPlan, NodePlan, RetryPolicy
from fabric.spec.conditions import WHEN_INPUT

if TYPE_CHECKING:
    from fabric.spec import MapSpec

ITEM_SLOT = "item"  # the map node's values are its items (or batches): `item0`, `item1`, ... (execute/mapping.py)


def item_slot(index: int) -> str:
    return f"{ITEM_SLOT}{index}"


def child_id(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


def map_node(node: NodePlan, spec: MapSpec, pack: bool = True) -> NodePlan:
    """The map node itself runs no code: it splits its input into items, then gathers its children's outputs.
    Its timeout and retries move to the children; it is never a cache node (its children may be). Not `pack`
    (the spec's `fuse: false`): each child is a Ray task of its own."""
    fan = MapPlan(over=spec.over, max_parallel=spec.max_parallel, min_success_ratio=spec.min_success_ratio,
                  batch_size=spec.batch_size, max_runtime=node.max_runtime, retry=node.retry, cache=node.cache,
                  cache_shared=node.cache_shared, pack=pack)
    return replace(node, map=fan, max_runtime=None, retry=RetryPolicy(), cache=False, cache_shared=False,
                   digest_outputs=False)


def batches(count: int, batch_size: int | None) -> list[range]:
    """The items of each child, in order: one per item, or runs of `batch_size`."""
    size = batch_size or 1
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def child_plans(node: NodePlan, item_hashes: list[str]) -> list[NodePlan]:
    """One plan per child of map node `node`, given its items' content hashes (in item order). A child reads its
    item (or batch) from the map node's slot `item<i>`, its other inputs as the map node does; its content hash
    covers its items' hashes. Under a cached map each child is a cache node whose key reads its `item_digest`
    (the item's content, not the spec of whatever produced the list: a changed item misses, the others hit)."""
    fan = node.map
    assert fan is not None, f"{node.node_id} is not a map node"
    children = []
    for index, items in enumerate(batches(len(item_hashes), fan.batch_size)):
        # The map's condition was decided in its count task (execute/mapping.py): a child runs, and never reads it.
        inputs = tuple(InputWire(w.name, node.node_id, item_slot(index)) if w.name == fan.over else w
                       for w in node.inputs if not w.name.startswith(WHEN_INPUT))
        joined = ','.join(item_hashes[i] for i in items)
        digest = hashlib.sha256(f"{node.content_hash}:{joined}".encode())
        item = None
        if fan.cache:  # a batch is a list handed to a per-item call: never keyed as one item with the same hash
            item = hashlib.sha256(f"batch:{joined}".encode()).hexdigest() if fan.batch_size else joined
        children.append(replace(
            node, node_id=child_id(node.node_id, index), inputs=inputs, upstream=(), downstream=(),
            max_runtime=fan.max_runtime, retry=fan.retry, content_hash=digest.hexdigest(), map=None,
            map_parent=node.node_id, batch_over=fan.over if fan.batch_size else None, fused_after=None,
            cache=fan.cache, cache_shared=fan.cache_shared, item_digest=item, when=None, when_params={},
            packed=fan.pack))
    return children
