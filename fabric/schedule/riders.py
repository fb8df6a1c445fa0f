"""Gated packs: which waiting nodes ride in an admitted node's Ray task, on its one booking (plan/fuse.py
`packable`). Each rider keeps its own attempt, log and outputs; the task only saves Ray's per-task price.

Map children pack by their map's size, as eager dispatch packs them. Plain siblings (ready nodes of one
submission with the same code and resources) pack only by what this run has seen them take: a pack of them
runs about PACK_BUDGET_S at most, by the longest run of their code so far, so long nodes never queue behind
each other in one task, whatever the cluster's size. Until one of them has run, none is packed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from fabric.plan.fuse import MAX_PACK, PACK_SPREAD, packable, same_task
from fabric.schedule.actions import NodeRun
from fabric.types import AttemptReport

if TYPE_CHECKING:
    from fabric.plan.model import NodePlan
    from fabric.schedule.mapping import Fan

PACK_BUDGET_S = 1.0  # a pack of plain siblings runs about this long at most (by their longest run seen)
SCAN = 4 * MAX_PACK  # waiting nodes looked at per admission, at most: O(pack), not O(waiting)


def code_of(plan: NodePlan) -> tuple[str, str]:
    """What a plain node's run time is learnt by: its kind and entrypoint. A kind with no entrypoint (`sql`,
    `embed`, ...) runs what its params say, so only a node with the very same content counts as the same code."""
    return plan.kind, plan.entrypoint or f"#{plan.content_hash}"


class PackSteps:
    """Mixed into RunMachine: the riders of an admitted node, and the run times they are sized by."""

    if TYPE_CHECKING:
        nodes: dict[str, NodeRun]
        _waiting: dict[str, None]
        _fans: dict[str, Fan]
        held: set[str]

    _pack_next: dict[str, str]  # a pack's member -> the next one in its Ray task (admission's booking goes on)
    _longest: dict[tuple[str, str], float]  # a plain node's code -> its longest run so far, in seconds

    @property
    def pack_next(self) -> Mapping[str, str]:
        """Each pack member's successor in its Ray task, until the member ends (the dispatcher groups by it)."""
        return self._pack_next

    def note_run(self, plan: NodePlan, report: AttemptReport) -> None:
        """A plain packable node's attempt ended: its run time (as its worker measured it, failed or not) sizes its
        siblings' packs."""
        if plan.map_parent is None and report.started_at is not None and report.ended_at is not None \
                and packable(plan):
            took = max(report.ended_at - report.started_at, 0.0)
            key = code_of(plan)
            self._longest[key] = max(self._longest.get(key, 0.0), took)

    def _pack_riders(self, head: NodeRun) -> list[NodeRun]:
        """The waiting nodes that run after admitted node `head` in its Ray task, on its booking, the newest
        waiting first (admission takes the oldest)."""
        size = self._pack_size(head) - 1
        if size < 1:
            return []
        parent = head.plan.map_parent
        riders: list[NodeRun] = []
        for scanned, node_id in enumerate(reversed(self._waiting)):
            node = self.nodes[node_id]
            if node.plan.map_parent == parent and node_id not in self.held and same_task(node.plan, head.plan) \
                    and packable(node.plan) and (parent is not None or code_of(node.plan) == code_of(head.plan)):
                riders.append(node)
            if len(riders) == size or scanned == SCAN:
                break
        for before, after in zip([head, *riders], riders, strict=False):
            self._pack_next[before.plan.node_id] = after.plan.node_id
        return riders

    def _pack_size(self, head: NodeRun) -> int:
        if not packable(head.plan):
            return 0
        parent = head.plan.map_parent
        if parent is None:  # a plain node: by its code's longest run, once one has run
            longest = self._longest.get(code_of(head.plan))
            if longest is None:
                return 0
            return MAX_PACK if longest * MAX_PACK <= PACK_BUDGET_S else int(PACK_BUDGET_S / longest)
        # A map child: as many as eager dispatch packs (the map in at least PACK_SPREAD packs, MAX_PACK at most).
        map_node, fan = self.nodes.get(parent), self._fans.get(parent)
        if fan is None or map_node is None or map_node.plan.map is None:
            return 0
        live = min(len(fan.children), map_node.plan.map.max_parallel or len(fan.children))  # at once, at most
        return min(MAX_PACK, live // PACK_SPREAD)
