"""The one enum of node states, the submission states, and their legal transitions."""

from __future__ import annotations

from enum import StrEnum

from fabric.errors import ErrorCode, IllegalTransition


class NodeState(StrEnum):
    PENDING = "PENDING"  # waiting for upstream nodes
    QUEUED = "QUEUED"  # ready, waiting for admission or capacity
    RUNNING = "RUNNING"  # released to Ray
    RETRYING = "RETRYING"  # an attempt failed; waiting out the backoff before the next
    SUCCEEDED = "SUCCEEDED"
    CACHED = "CACHED"  # outputs reused from an identical finished node
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    SKIPPED = "SKIPPED"  # an upstream node did not succeed
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_NODE_STATES

    @property
    def ok(self) -> bool:
        return self in (NodeState.SUCCEEDED, NodeState.CACHED)


TERMINAL_NODE_STATES = frozenset(
    {NodeState.SUCCEEDED, NodeState.CACHED, NodeState.FAILED, NodeState.TIMED_OUT,
     NodeState.SKIPPED, NodeState.CANCELLED}
)

_N = NodeState
NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    _N.PENDING: frozenset({_N.QUEUED, _N.CACHED, _N.SKIPPED, _N.CANCELLED}),
    _N.QUEUED: frozenset({_N.RUNNING, _N.CACHED, _N.SKIPPED, _N.CANCELLED}),
    # RUNNING -> QUEUED is a preemption: the attempt is requeued, not counted as a failure.
    _N.RUNNING: frozenset({_N.SUCCEEDED, _N.FAILED, _N.TIMED_OUT, _N.RETRYING, _N.CANCELLED,
                           _N.SKIPPED, _N.QUEUED}),
    _N.RETRYING: frozenset({_N.QUEUED, _N.CANCELLED, _N.SKIPPED}),
    _N.SUCCEEDED: frozenset(),
    _N.CACHED: frozenset(),
    _N.FAILED: frozenset(),
    _N.TIMED_OUT: frozenset(),
    _N.SKIPPED: frozenset(),
    _N.CANCELLED: frozenset(),
}


class SubmissionState(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self is not SubmissionState.RUNNING


_S = SubmissionState
SUBMISSION_TRANSITIONS: dict[SubmissionState, frozenset[SubmissionState]] = {
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.TIMED_OUT, _S.CANCELLED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.TIMED_OUT: frozenset(),
    _S.CANCELLED: frozenset(),
}


def check_node_transition(node_id: str, current: NodeState, target: NodeState) -> None:
    """Raise IllegalTransition unless `current -> target` is in NODE_TRANSITIONS."""
    _check("node", node_id, target in NODE_TRANSITIONS[current], current, target)


def check_submission_transition(submission_id: str, current: SubmissionState,
                                target: SubmissionState) -> None:
    """Raise IllegalTransition unless `current -> target` is in SUBMISSION_TRANSITIONS."""
    _check("submission", submission_id, target in SUBMISSION_TRANSITIONS[current], current, target)


def _check(what: str, ident: str, allowed: bool, current: StrEnum, target: StrEnum) -> None:
    if not allowed:
        raise IllegalTransition(
            f"{what} {ident!r} cannot go from {current} to {target}",
            code=ErrorCode.ILLEGAL_TRANSITION,
            where=f"{what} {ident}",
            fix="this is a fabric bug: please report it with the submission's events",
        )
