"""The engine's side of fused chains and packs (plan/fuse.py): which dispatches of one batch share a Ray task, and
how each member's inputs are wired inside it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fabric.execute.chain import EXTERNAL
from fabric.plan import ExecutionPlan
from fabric.plan.fuse import MAX_PACK, PACK_SPREAD, packable
from fabric.schedule import Action, Dispatch


def fused_groups(plan: ExecutionPlan, actions: Sequence[Action]) -> dict[str, list[Dispatch]]:
    """Head node -> the dispatches (head first) that go as one Ray task: a member joins its predecessor's group
    only when both are dispatched in this batch and it is wired to that very dispatch. O(actions)."""
    last_of: dict[str, list[Dispatch]] = {}  # node id -> the group it is the last member of so far
    groups: dict[str, list[Dispatch]] = {}
    for action in actions:
        if not isinstance(action, Dispatch):
            continue
        previous = plan.nodes[action.node_id].fused_after
        group = last_of.pop(previous, None) if previous is not None else None
        if group is not None and previous is not None and dict(action.input_tokens).get(previous) == group[-1].token:
            group.append(action)
        else:
            group = groups[action.node_id] = [action]
        last_of[action.node_id] = group
    return {head: group for head, group in groups.items() if len(group) > 1}


def map_packs(plan: ExecutionPlan, actions: Sequence[Action], spread: int = PACK_SPREAD,
              most: int = MAX_PACK) -> dict[str, list[Dispatch]]:
    """First child -> the packable children of one map (dispatched in this batch) that go as one Ray task: a map of
    thousands of tiny items costs Ray's per-task price once per pack, not per item. Packs of one are left out."""
    by_map: dict[str, list[Dispatch]] = {}
    for action in actions:
        if isinstance(action, Dispatch):
            node = plan.nodes[action.node_id]
            if node.map_parent is not None and packable(node):
                by_map.setdefault(node.map_parent, []).append(action)
    packs: dict[str, list[Dispatch]] = {}
    for children in by_map.values():
        size = min(most, len(children) // spread)
        if size > 1:
            for start in range(0, len(children), size):
                pack = children[start:start + size]
                if len(pack) > 1:
                    packs[pack[0].node_id] = pack
    return packs


def admitted_packs(actions: Sequence[Action], pack_next: Mapping[str, str]) -> dict[str, list[Dispatch]]:
    """Gated: head -> the dispatches of one admission that go as one Ray task, as the run machine chained them
    (schedule/riders.py `pack_next`). O(actions)."""
    dispatches = {a.node_id: a for a in actions if isinstance(a, Dispatch)}
    riders = {pack_next[n] for n in dispatches if n in pack_next}
    packs: dict[str, list[Dispatch]] = {}
    for node_id, action in dispatches.items():
        if node_id in riders or node_id not in pack_next:
            continue
        pack = [action]
        while (following := pack_next.get(pack[-1].node_id)) is not None and following in dispatches:
            pack.append(dispatches[following])
        if len(pack) > 1:
            packs[node_id] = pack
    return packs


def wire_chain(plan: ExecutionPlan, group: Sequence[Dispatch], code: Mapping[str, Any],
               ref: Callable[[str, int | None, str], Any]) -> tuple[list[Any], list[tuple[tuple[int, int], ...]]]:
    """The fused task's inputs (refs from outside it, each once) and, per member, where each of its inputs
    comes from: `(EXTERNAL, i)` or `(j, slot)` of an earlier member. `ref(producer, token, out)` is the ref of
    an outside producer's output; `code` maps an entrypoint to its notebook function's ref."""
    inputs: list[Any] = []
    seen: dict[tuple[str, int | None, str], int] = {}
    member = {d.node_id: i for i, d in enumerate(group)}
    sources: list[tuple[tuple[int, int], ...]] = []
    for index, action in enumerate(group):
        node = plan.nodes[action.node_id]
        tokens = dict(action.input_tokens)
        wired: list[tuple[int, int]] = []
        blob = code.get(node.entrypoint or "")
        if blob is not None:
            wired.append((EXTERNAL, len(inputs)))
            inputs.append(blob)
        for wire in node.inputs:
            token = tokens[wire.producer]
            inside = member.get(wire.producer)
            if inside is not None and inside < index and group[inside].token == token:
                wired.append((inside, plan.nodes[wire.producer].result_slots.index(wire.out)))
                continue
            key = (wire.producer, token, wire.out)
            if key not in seen:
                seen[key] = len(inputs)
                inputs.append(ref(*key))
            wired.append((EXTERNAL, seen[key]))
        sources.append(tuple(wired))
    return inputs, sources
