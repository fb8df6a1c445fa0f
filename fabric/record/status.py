"""Status views of a submission and its nodes: plain frozen data, JSON-friendly both ways."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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

    def node(self, node_id: str) -> NodeStatus:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    @property
    def done(self) -> bool:
        return self.state.terminal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubmissionStatus:
        nodes = tuple(
            NodeStatus(**{**n, "state": NodeState(n["state"]), "error": _error(n.get("error")),
                          "history": tuple(AttemptStatus(**{**a, "error": _error(a.get("error"))})
                                           for a in n.get("history", ()))})
            for n in data["nodes"])
        return cls(**{**data, "state": SubmissionState(data["state"]), "nodes": nodes})


def _error(data: dict[str, Any] | ErrorInfo | None) -> ErrorInfo | None:
    if data is None or isinstance(data, ErrorInfo):
        return data
    return ErrorInfo(**data)
