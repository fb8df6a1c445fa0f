"""What the run state machine emits and keeps per node: its actions (Dispatch, Kill), transitions, attempts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fabric.plan import NodePlan
from fabric.states import KillCause, NodeState
from fabric.types import AttemptReport, ErrorInfo

Clock = Callable[[], float]


@dataclass(frozen=True)
class Dispatch:
    """Submit attempt `attempt` of `node_id` under `token`, wired to the producers' tokens."""

    node_id: str
    attempt: int
    token: int
    input_tokens: tuple[tuple[str, int | None], ...]  # (producer node id, its token; None: it was SKIPPED)


@dataclass(frozen=True)
class Kill:
    """Stop the Ray work of dispatch `token` of `node_id`; `cause.force` says whether at once."""

    node_id: str
    token: int
    cause: KillCause
    reason: str = ""


@dataclass(frozen=True)
class Gather:
    """Map node `node_id` ended well: its outputs are its succeeded children's (in item order), gathered."""

    node_id: str
    token: int
    children: tuple[tuple[str, int], ...]  # (child, its token), succeeded ones only, in item order
    missing: tuple[int, ...]  # the indices of the items without an output (their child failed)
    batched: bool  # each child's outputs are lists (one value per item of its batch)


Action = Dispatch | Kill | Gather


@dataclass(frozen=True)
class Transition:
    node_id: str | None  # None: the submission itself
    source: str
    target: str
    at: float
    attempt: int = 0
    reason: str = ""


@dataclass
class Attempt:
    number: int
    started_at: float  # when the fabric released it to run
    ended_at: float | None = None
    outcome: NodeState | None = None
    error: ErrorInfo | None = None
    report: AttemptReport | None = None


@dataclass
class Outcome:
    ok: bool
    report: AttemptReport
    error: ErrorInfo | None


@dataclass
class NodeRun:
    plan: NodePlan
    state: NodeState = NodeState.PENDING
    token: int | None = None
    input_tokens: dict[str, int | None] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    queued_at: float | None = None
    deadline: float | None = None
    retry_at: float | None = None
    buffered: Outcome | None = None
    progress: float = 0.0
    message: str = ""
    reason: str = ""
    uncounted: int = 0  # attempts not charged to the retry budget (interrupted by a registry restart)
    ok_upstream: int = 0  # upstream nodes that are settled: SUCCEEDED, CACHED or SKIPPED
    skipped_upstream: list[str] = field(default_factory=list)  # upstream nodes that were SKIPPED
    dispatched_upstream: int = 0  # upstream nodes with a live dispatch (a token)
    cost: float = 0.0  # what its attempts cost so far: resource-seconds times the rates of where they ran

    @property
    def error(self) -> ErrorInfo | None:
        return self.attempts[-1].error if self.attempts else None
