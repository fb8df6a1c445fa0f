"""Exit hooks in the run machine (pure): held back until every other node has ended, then run or skipped by the
run's outcome; and the outcome they are told."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fabric.plan import ExecutionPlan
from fabric.schedule.actions import NodeRun
from fabric.spec.exits import OnExit
from fabric.states import NodeState


class ExitHooks:
    """The exit hooks of one run. Until `release`, they stay PENDING whatever their (absent) upstream says."""

    def __init__(self, plan: ExecutionPlan) -> None:
        self.hooks: tuple[str, ...] = tuple(n for n in plan.order if plan.nodes[n].on_exit)
        self.released = not self.hooks

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def may_start(self, node: NodeRun) -> bool:
        return self.released or node.plan.on_exit is None

    def due(self, terminal: int, nodes: Mapping[str, NodeRun]) -> bool:
        """Every node but the hooks has ended (`terminal`: how many nodes have, hooks included; O(hooks))."""
        if self.released:
            return False
        ended_hooks = sum(nodes[h].state.terminal for h in self.hooks)
        return terminal - ended_hooks == len(nodes) - len(self.hooks)

    def release(self, nodes: Mapping[str, NodeRun]) -> tuple[list[str], list[tuple[str, str]]]:
        """The hooks that now run, and those skipped with why (a `success` hook of a failed run, ...)."""
        self.released = True
        succeeded = main_succeeded(nodes, self.hooks)
        run: list[str] = []
        skip: list[tuple[str, str]] = []
        for hook in self.hooks:
            node = nodes[hook]
            if node.state is not NodeState.PENDING:
                continue  # ended before a registry restart: as it ended
            when = OnExit(node.plan.on_exit or OnExit.ALWAYS)  # set on every hook
            if when.runs_after(succeeded):
                run.append(hook)
            else:
                skip.append((hook, f"on_exit {when}: the run {'succeeded' if succeeded else 'failed'}"))
        return run, skip

    def succeeded(self, nodes: Mapping[str, NodeRun]) -> bool:
        """The submission's outcome once every node has ended: the other nodes all settled (ok, or SKIPPED by a
        condition: a SKIPPED after a failure comes with that FAILED node), and no hook that ran failed."""
        return all(run.state.settled for run in nodes.values() if run.plan.map_parent is None)  # a child: its map


def main_succeeded(nodes: Mapping[str, NodeRun], hooks: tuple[str, ...]) -> bool:
    skip = set(hooks)
    return all(run.state.settled for n, run in nodes.items() if n not in skip and run.plan.map_parent is None)


def run_outcome(submission_id: str, pipeline_id: str, nodes: Mapping[str, NodeRun]) -> dict[str, Any]:
    """What an exit hook is told (`fabric.context().run_outcome`): the run's state before its hooks, and every
    other node's state; `failed` lists the nodes that FAILED or TIMED_OUT."""
    others = {n: run for n, run in nodes.items() if run.plan.on_exit is None}
    ok = all(run.state.settled for run in others.values())
    return {"submission_id": submission_id, "pipeline_id": pipeline_id, "state": "SUCCEEDED" if ok else "FAILED",
            "nodes": {n: run.state.value for n, run in others.items()},
            "failed": [n for n, run in others.items() if run.state in (NodeState.FAILED, NodeState.TIMED_OUT)]}
