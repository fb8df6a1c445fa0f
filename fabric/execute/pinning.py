"""Where admission's placement pins a Ray task, and where Ray is left to place it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fabric.plan import ResourceUnit
from fabric.schedule.admission import Placement


def tenant_custom(custom: Mapping[str, float]) -> dict[str, float]:
    """A node's custom resources without Ray's `node:*` placement keys (`node:__internal_head__` pins to the head)."""
    return {key: value for key, value in custom.items() if not key.startswith("node:")}


ADMISSION_MODELLED = frozenset({"gpu_mem_gb"})  # the custom resources admission books per node (schedule/queue.py)


def pinned_node(placement: Placement | None, unit: ResourceUnit, plain_cluster: bool = False) -> str | None:
    """The node admission placed this work on, or None where Ray should place it: no placement; a custom
    resource admission does not book per node (a node type's or a machine's own label, `{w2: 1}`), which the
    node admission chose may lack: pinned there, Ray would refuse the task as infeasible; or CPU work on a
    `plain_cluster` (no pools, no spot nodes), where admission's choice adds nothing Ray would not do (Ray keeps
    CPU work off GPU nodes itself) and a pin only costs: a retry after a worker crash waited on the crashed
    worker's node until its lease was freed, and one after a node's forced removal on a node not yet declared dead."""
    if placement is None or any(key not in ADMISSION_MODELLED for key in tenant_custom(unit.custom)):
        return None
    if plain_cluster and unit.num_gpus <= 0 and "gpu_mem_gb" not in unit.custom:
        return None
    return placement.node_id


def is_plain(nodes: Sequence[Mapping[str, Any]]) -> bool:
    """No live node in a pool or on spot capacity (how scheduler.ray_nodes tells them): all CPUs are alike."""
    return not any(n.get("Alive") and (n.get("Resources", {}).get("spot", 0.0) > 0
                                       or any(k.startswith("pool:") for k in n.get("Resources", {})))
                   for n in nodes)
