"""The run machine's map nodes: expansion into children `node[i]`, their release under `max_parallel`, and the
map's end (every child ended: SUCCEEDED with a `Gather` of the children's outputs, or FAILED below its ratio).

A child is a node of its own (state, attempts, retries, timeout, token) in `machine.nodes`, and its plan joins
`plan.nodes` (never `plan.order`). It has no upstream in the plan: it waits PENDING until its map releases it,
and the map node hears of every change of it through `map_parent`. Work is O(1) per child event."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fabric.plan.expand import batches, child_plans
from fabric.schedule.actions import Action, Attempt, Gather, NodeRun, Outcome
from fabric.spec.mapping import parent_of
from fabric.states import NodeState
from fabric.types import AttemptReport, ErrorInfo

if TYPE_CHECKING:
    from fabric.plan import ExecutionPlan


@dataclass
class Fan:
    """One expanded map node: its children in item order, how many are released, running and ended."""

    children: list[str]
    items: list[range]  # the item indices of each child
    released: int = 0
    live: int = 0
    ended: set[str] = field(default_factory=set)


class MapSteps:
    """Mixed into RunMachine: what it does for map nodes and their children."""

    if TYPE_CHECKING:
        plan: ExecutionPlan
        nodes: dict[str, NodeRun]
        _terminal: int
        _tokens: Any
        def _settle(self, touched: Sequence[str]) -> list[Action]: ...
        def _finish_attempt(self, node: NodeRun, outcome: Outcome, *, timed_out: bool = False) -> None: ...
        def _set_token(self, node: NodeRun, token: int | None) -> None: ...
        _clock: Callable[[], float]

    _fans: dict[str, Fan]
    _waiting: dict[str, None]
    held: set[str]
    _stashed: dict[str, tuple[NodeState, Sequence[tuple[float, float | None, str | None]]]]

    def _stash_children(self, states: Mapping[str, NodeState],
                        history: Mapping[str, Sequence[tuple[float, float | None, str | None]]]) -> None:
        """Restoring: the recorded children, applied when their map expands again (a SUCCEEDED one never reruns)."""
        self._stashed = {n: (states.get(n, NodeState.PENDING), history.get(n, ())) for n in {*states, *history}
                         if parent_of(n) is not None}

    def node_order(self) -> list[str]:
        """Every node in plan order, each map's children (in item order) right after it."""
        order = []
        for node_id in self.plan.order:
            order.append(node_id)
            fan = self._fans.get(node_id)
            if fan is not None:
                order.extend(fan.children)
        return order

    def stash_reasons(self, reasons: Mapping[str, str]) -> None:
        """A re-run: why its reused children start CACHED (the reason names the submission they come from)."""
        self._reasons = dict(reasons)

    def expand(self, node_id: str, token: int, item_hashes: list[str]) -> list[Action]:
        """Map node `node_id`'s items are known (their content hashes, in order): make its children and release
        the first `max_parallel`. A stale token (the map was cancelled or ended meanwhile) does nothing."""
        node = self.nodes[node_id]
        fan_plan = node.plan.map
        if fan_plan is None or node.token != token or node.state is not NodeState.RUNNING or node_id in self._fans:
            return []
        plans = child_plans(node.plan, item_hashes)
        fan = self._fans[node_id] = Fan([p.node_id for p in plans], batches(len(item_hashes), fan_plan.batch_size))
        nodes: dict[str, Any] = self.plan.nodes  # type: ignore[assignment]  # the compiled plan's own dict
        stashed = getattr(self, "_stashed", {})
        for plan in plans:
            nodes[plan.node_id] = plan
            child = self.nodes[plan.node_id] = NodeRun(plan)
            state, history = stashed.get(plan.node_id, (NodeState.PENDING, ()))
            for number, (started, ended, outcome) in enumerate(history, start=1):
                interrupted = ended is None  # as RunMachine.restore: not charged to its retries
                ended_as = NodeState.QUEUED if interrupted else NodeState(outcome) if outcome else None
                child.attempts.append(Attempt(number, started, self._clock() if interrupted else ended, ended_as))
                child.uncounted += interrupted
            if state.terminal:
                child.state, child.reason = state, getattr(self, "_reasons", {}).get(plan.node_id, "")
                self._terminal += 1
                fan.ended.add(plan.node_id)
                if state.ok:
                    self._set_token(child, next(self._tokens))
        node.message = f"{len(item_hashes)} items in {len(plans)} children"
        return self._settle([node_id])

    def restored_children(self, node_id: str) -> dict[str, int]:
        """The children of map `node_id` restored SUCCEEDED, with their tokens: their outputs come from the store."""
        fan = self._fans.get(node_id)
        return {c: t for c in (fan.children if fan else ()) for t in (self.nodes[c].token,)
                if self.nodes[c].state.ok and t is not None}

    def _map_step(self, node: NodeRun, work: deque[str]) -> list[Action]:
        """A map node or one of its children was touched: account for the child, release more, or end the map."""
        parent = node.plan.map_parent
        if parent is not None:  # a child: its map hears of it
            fan = self._fans[parent]
            if node.state.terminal and node.plan.node_id not in fan.ended:
                fan.ended.add(node.plan.node_id)
                fan.live -= 1
                work.append(parent)
            return []
        fan_or_none = self._fans.get(node.plan.node_id)
        if fan_or_none is None or node.state is not NodeState.RUNNING:
            return []
        fan, limit = fan_or_none, node.plan.map.max_parallel if node.plan.map else None
        while fan.released < len(fan.children) and (limit is None or fan.live < limit):
            child = fan.children[fan.released]
            fan.released += 1
            if child not in fan.ended:  # restored children that ended stay as they were
                fan.live += 1
                work.append(child)
        node.progress = len(fan.ended) / len(fan.children) if fan.children else 1.0
        if len(fan.ended) < len(fan.children):
            return []
        return self._end_map(node, fan)

    def _end_map(self, node: NodeRun, fan: Fan) -> list[Action]:
        assert node.plan.map is not None and node.token is not None
        ok = [(c, r) for c, r in zip(fan.children, fan.items, strict=True) if self.nodes[c].state.ok]
        total = sum(len(r) for r in fan.items)
        done = sum(len(r) for _, r in ok)
        missing = tuple(i for c, r in zip(fan.children, fan.items, strict=True) if not self.nodes[c].state.ok
                        for i in r)
        ratio = node.plan.map.min_success_ratio or 1.0
        shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        if total and done < ratio * total - 1e-9:
            error = ErrorInfo("MapFailed", f"{total - done} of {total} items failed (items {shown}); "
                                           f"{done / total:.0%} succeeded, min_success_ratio is {ratio:g}")
            self._finish_attempt(node, Outcome(False, AttemptReport(ended_at=self._clock()), error))
            return []
        message = f"{done} of {total} items succeeded" + (f"; failed items: {shown}" if missing else "")
        gather = Gather(node.plan.node_id, node.token, tuple((c, self.nodes[c].token or 0) for c, _ in ok), missing,
                        node.plan.map.batch_size is not None)
        self._finish_attempt(node, Outcome(True, AttemptReport(ended_at=self._clock(), message=message), None))
        return [gather]
