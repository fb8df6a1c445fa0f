"""The fabric's shared vocabulary, pure: node and submission states with their legal transitions and
terminal sets, and the small enums that cross layers (why a Kill, why a node waits, what a non-transition
audit row is). Stored values equal the strings older records hold, so an old database replays."""

from __future__ import annotations

from dataclasses import dataclass
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
    SKIPPED = "SKIPPED"  # its `when` was false, an upstream node was SKIPPED, or one did not succeed
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_NODE_STATES

    @property
    def ok(self) -> bool:
        return self in OK_NODE_STATES

    @property
    def settled(self) -> bool:
        """Done in a way that lets its downstream go on: ok, or SKIPPED (each child then follows its on_skipped)."""
        return self in OK_NODE_STATES or self is NodeState.SKIPPED


OK_NODE_STATES = frozenset({NodeState.SUCCEEDED, NodeState.CACHED})  # its outputs exist: downstream may read them
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
        return self in TERMINAL_SUBMISSION_STATES


TERMINAL_SUBMISSION_STATES = frozenset(
    {SubmissionState.SUCCEEDED, SubmissionState.FAILED, SubmissionState.TIMED_OUT, SubmissionState.CANCELLED}
)

_S = SubmissionState
SUBMISSION_TRANSITIONS: dict[SubmissionState, frozenset[SubmissionState]] = {
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.TIMED_OUT, _S.CANCELLED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.TIMED_OUT: frozenset(),
    _S.CANCELLED: frozenset(),
}


class KillCause(StrEnum):
    """Why the engine stops a dispatch's Ray work, and so how: a timeout is forced at once; a cancel or a
    preemption is cooperative first (a KeyboardInterrupt in the task), forced after a grace period."""

    CANCELLED = "cancelled"  # the submission was cancelled (by its user, or an engine error)
    PREEMPTED = "preempted"  # more urgent work needs the room: the attempt is requeued
    NODE_TIMEOUT = "node timeout"  # the node's own slo.max_runtime passed
    DAG_TIMEOUT = "dag timeout"  # the submission's slo.max_runtime passed

    @property
    def force(self) -> bool:
        return self in (KillCause.NODE_TIMEOUT, KillCause.DAG_TIMEOUT)


class WaitReason(StrEnum):
    """Why a ready (QUEUED) node does not run yet; the value starts the reason shown in its status."""

    NO_CAPACITY = "no capacity"  # no node has room now (held demand is shown to the autoscaler)
    POOL_LIMIT = "pool limit"  # its pool's max_concurrency is reached
    RESERVATION = "reservation"  # it would delay a reserved, more urgent node (EASY backfill)
    QUOTA = "quota"  # its team's budget holds it (or the team's quota actor does not answer)
    COALESCED = "coalesced"  # an identical cache node runs now: it waits to reuse its outputs


@dataclass(frozen=True)
class Wait:
    """Why a node waits, with the particulars: shown as `"<why>: <detail>"` (a detail that starts with a space,
    such as `" (CPU fallback at 160)"`, follows `why` directly)."""

    why: WaitReason
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.why}: {self.detail}" if self.detail[:1] not in ("", " ") else f"{self.why}{self.detail}"


class EventKind(StrEnum):
    """The audit table's rows that are not state transitions. A row of kind K stores K as its source and
    target (the kill-switch: its old and new position), so `event.source == EventKind.COST` reads old rows."""

    COST = "cost"  # what an ended attempt cost, in the reason (under its submission and node)
    QUOTA_USE = "usage"  # a team's charged use of the day, JSON in the reason (subject QUOTA_SUBJECT + team)
    KILL_SWITCH_ON = "on"  # subject KILL_SWITCH: admission closed
    KILL_SWITCH_OFF = "off"  # subject KILL_SWITCH: admission open again
    EXPIRED = "EXPIRED"  # the target when retention removed a finished submission's data
    NOTIFY_DELIVERED = "delivered"  # subject NOTIFY_SUBJECT + submission: a webhook answered 2xx (source: the event)
    NOTIFY_RETRY = "retry"  # a delivery attempt failed and will be tried again
    NOTIFY_GAVE_UP = "gave-up"  # a delivery failed for good (attempts spent, refused address, 4xx, no secret)


# The subjects (submission_id column) of audit rows that are not a submission's; they start with "_".
KILL_SWITCH = "_admin:kill-switch"
QUOTA_SUBJECT = "_quota:"  # + team
PROMOTE_SUBJECT = "_promote:"  # + served name: each gate and traffic step of a promotion
NOTIFY_SUBJECT = "_notify:"  # + submission id: each webhook delivery attempt of its notify section


def is_admin_subject(submission_id: str) -> bool:
    """Is this an audit row of the control plane (kill-switch, quota, promotion, notify), not of a run?"""
    return submission_id.startswith("_")


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
