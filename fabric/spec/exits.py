"""Exit hooks as users write them (`on_exit` on a node) and the rules that keep them outside the DAG's wiring."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from fabric.errors import ErrorCode, Problem


class OnExit(StrEnum):
    """When an exit hook runs, once every other node of the run has ended."""

    ALWAYS = "always"
    SUCCESS = "success"  # every other node SUCCEEDED (or was CACHED, or SKIPPED by its condition)
    FAILURE = "failure"  # some other node did not

    def runs_after(self, succeeded: bool) -> bool:
        return self is OnExit.ALWAYS or (self is OnExit.SUCCESS) == succeeded


def exit_problems(raw: Mapping[str, Any], edges: Mapping[tuple[str, str], str]) -> list[Problem]:
    """An exit hook reads no node's outputs and has no edges (it runs after all of them, whatever they did), is
    not cached, and is not the only kind of node. On the raw spec (malformed nodes tolerated); `edges`: the
    graph's edges (given or derived from ins/outs), each with where it was written."""
    nodes = [n for n in raw.get("nodes") or [] if isinstance(n, Mapping)] if isinstance(raw.get("nodes"), list) else []
    hooks = {}
    for i, node in enumerate(nodes):
        if node.get("on_exit") is not None and isinstance(node.get("id"), str):
            hooks[node["id"]] = i
    problems: list[Problem] = []
    for node_id, i in hooks.items():
        if nodes[i].get("ins"):
            problems.append(Problem(ErrorCode.SPEC_FIELD, f"nodes[{i}].ins",
                                    f"exit hook {node_id!r} cannot read other nodes' outputs: they may not exist",
                                    "drop its ins; it reads the run's outcome from fabric.context().run_outcome"))
        if nodes[i].get("cache"):
            problems.append(Problem(ErrorCode.SPEC_FIELD, f"nodes[{i}].cache", f"exit hook {node_id!r} is not cached",
                                    "drop cache: an exit hook runs at the end of every run it applies to"))
    for (src, dst), where in edges.items():
        hook = src if src in hooks else dst if dst in hooks else None
        if hook is not None and not (hook == dst and where.startswith(f"nodes[{dst}].ins")):  # its ins: see above
            problems.append(Problem(ErrorCode.SPEC_FIELD, where,
                                    f"exit hook {hook!r} cannot be in an edge ({src} -> {dst})",
                                    "an exit hook runs after every other node has ended: remove the edge (and "
                                    "any ins that read its outs)"))
    if hooks and len(hooks) == len(nodes):
        problems.append(Problem(ErrorCode.SPEC_FIELD, "nodes", "every node is an exit hook",
                                "add the work itself: a node without on_exit"))
    return problems
