"""Status views of a submission and its nodes: plain frozen data, JSON-friendly both ways."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fabric.states import NodeState, SubmissionState
from fabric.types import ErrorInfo


@dataclass(frozen=True)
class AttemptStatus:
    attempt: int
    started_at: float
    ended_at: float | None
    outcome: str | None
    worker_started_at: float | None = None
    worker_ended_at: float | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    kind: str
    state: NodeState
    attempts: int
    queued_at: float | None
    started_at: float | None
    ended_at: float | None
    progress: float
    message: str
    reason: str
    error: ErrorInfo | None
    history: tuple[AttemptStatus, ...] = ()
    cost: float = 0.0  # resource-seconds times the hourly rates of the pools it ran in (with admission on)

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.ended_at or 0.0) - self.started_at if self.ended_at else None


@dataclass(frozen=True)
class SubmissionStatus:
    submission_id: str
    pipeline_id: str
    state: SubmissionState
    created_at: float
    ended_at: float | None
    labels: dict[str, str]
    nodes: tuple[NodeStatus, ...]
    reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # the pipeline params' resolved values

    @property
    def cost(self) -> float:
        """What the submission's attempts have cost so far, in the currency of the pools' rates."""
        return sum(node.cost for node in self.nodes)

    def node(self, node_id: str) -> NodeStatus:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    @property
    def done(self) -> bool:
        return self.state.terminal

    def to_dict(self) -> dict[str, Any]:
        # Written out by hand: dataclasses.asdict deep-copies recursively and costs ~40 ms at 1,000 nodes.
        return {
            "submission_id": self.submission_id, "pipeline_id": self.pipeline_id, "state": str(self.state),
            "created_at": self.created_at, "ended_at": self.ended_at, "labels": dict(self.labels),
            "reason": self.reason, "counts": dict(self.counts), "cost": round(self.cost, 6),
            "params": dict(self.params),
            "nodes": [_node_dict(n) for n in self.nodes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubmissionStatus:
        nodes = tuple(
            NodeStatus(**{**n, "state": NodeState(n["state"]), "error": _error(n.get("error")),
                          "history": tuple(AttemptStatus(**{**a, "error": _error(a.get("error"))})
                                           for a in n.get("history", ()))})
            for n in data["nodes"])
        fields = {k: v for k, v in data.items() if k != "cost"}  # the sum of its nodes' costs
        return cls(**{**fields, "state": SubmissionState(data["state"]), "nodes": nodes})


def _node_dict(node: NodeStatus) -> dict[str, Any]:
    return {
        "node_id": node.node_id, "kind": node.kind, "state": str(node.state), "attempts": node.attempts,
        "queued_at": node.queued_at, "started_at": node.started_at, "ended_at": node.ended_at,
        "progress": node.progress, "message": node.message, "reason": node.reason,
        "error": node.error.to_dict() if node.error else None, "cost": round(node.cost, 6),
        "history": [{"attempt": a.attempt, "started_at": a.started_at, "ended_at": a.ended_at,
                     "outcome": a.outcome, "worker_started_at": a.worker_started_at,
                     "worker_ended_at": a.worker_ended_at, "error": a.error.to_dict() if a.error else None}
                    for a in node.history],
    }


def _error(data: dict[str, Any] | ErrorInfo | None) -> ErrorInfo | None:
    if data is None or isinstance(data, ErrorInfo):
        return data
    return ErrorInfo(**data)
