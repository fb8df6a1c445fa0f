"""Rebuild a submission's status from its record and its events alone (after the registry restarts)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fabric.record.status import AttemptStatus, NodeStatus, SubmissionStatus
from fabric.record.store import Event, SubmissionRecord
from fabric.spec.mapping import parent_of
from fabric.states import EventKind, NodeState, SubmissionState
from fabric.types import ErrorInfo


def status_from_events(record: SubmissionRecord, events: Iterable[Event]) -> SubmissionStatus:
    """The status the events describe. Errors are known by their message only (the event's reason)."""
    nodes: dict[str, dict[str, Any]] = {
        n["id"]: {"kind": n.get("kind", ""), "state": NodeState.PENDING, "attempts": [], "queued_at": None,
                  "reason": ""}
        for n in record.spec.get("nodes", [])
    }
    state, ended_at, reason = SubmissionState.RUNNING, None, ""
    for event in events:
        if event.node_id is None:
            state, ended_at, reason = SubmissionState(event.target), event.at, event.reason
            continue
        node = nodes.get(event.node_id)
        if node is None:
            parent = parent_of(event.node_id)  # a map's child `node[i]`: it exists once its map expanded
            if parent is None or parent[0] not in nodes:
                continue
            node = nodes[event.node_id] = {**nodes[parent[0]], "state": NodeState.PENDING, "attempts": [],
                                           "queued_at": None, "reason": ""}
        if event.source == EventKind.COST:  # not a transition: what an ended attempt cost
            node["cost"] = node.get("cost", 0.0) + float(event.reason or 0.0)
            continue
        target = NodeState(event.target)
        node["state"], node["reason"] = target, event.reason
        if target is NodeState.QUEUED:
            node["queued_at"] = event.at
            if event.source == NodeState.RUNNING and node["attempts"] and node["attempts"][-1]["ended_at"] is None:
                node["attempts"][-1]["ended_at"], node["attempts"][-1]["outcome"] = event.at, str(target)  # preempted
        elif target is NodeState.RUNNING:
            node["attempts"].append({"started_at": event.at, "ended_at": None, "outcome": None, "error": None})
        elif node["attempts"] and node["attempts"][-1]["ended_at"] is None and target is not NodeState.SKIPPED:
            attempt = node["attempts"][-1]
            attempt["ended_at"], attempt["outcome"] = event.at, str(target)
            if not target.ok:
                attempt["error"] = ErrorInfo(type=str(target), message=event.reason)
    statuses = []
    counts: dict[str, int] = {}
    for node_id, node in nodes.items():
        history = tuple(AttemptStatus(attempt=i + 1, started_at=a["started_at"], ended_at=a["ended_at"],
                                      outcome=a["outcome"], error=a["error"])
                        for i, a in enumerate(node["attempts"]))
        final: NodeState = node["state"]
        counts[str(final)] = counts.get(str(final), 0) + 1
        statuses.append(NodeStatus(
            node_id=node_id, kind=node["kind"], state=final, attempts=len(history),
            queued_at=node["queued_at"], started_at=history[0].started_at if history else None,
            ended_at=history[-1].ended_at if history and final.terminal else None,
            progress=1.0 if final.ok else 0.0, message="",
            # CACHED keeps why (a re-run's "reused: the outputs of <id>": a restarted registry reads them there)
            reason=node["reason"] if not final.ok or final is NodeState.CACHED else "",
            error=history[-1].error if history and not final.ok else None, history=history,
            cost=node.get("cost", 0.0)))
    return SubmissionStatus(
        submission_id=record.submission_id, pipeline_id=record.pipeline_id, state=state,
        created_at=record.created_at, ended_at=ended_at, labels=dict(record.labels), nodes=tuple(statuses),
        reason=reason, counts=counts, params=dict(record.runtime_params.get("params") or {}))
