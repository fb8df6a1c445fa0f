"""Attempts on a time line (queue wait, run time), the critical path, and trace spans, from recorded events.

Pure: the UI's Gantt chart, `fabric graph` and the OpenTelemetry exporter (`fabric.actors.observe`) all
read a submission's story from the same events the audit log keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fabric.record.store import Event, SubmissionRecord
from fabric.states import OK_NODE_STATES, TERMINAL_SUBMISSION_STATES, EventKind


@dataclass
class AttemptSpan:
    """One attempt: queued (ready to run, waiting for admission or a backoff), started (released to Ray), ended."""

    attempt: int
    queued_at: float | None
    started_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "queued_at": self.queued_at, "started_at": self.started_at,
                "ended_at": self.ended_at, "outcome": self.outcome, "reason": self.reason}


def attempt_timeline(events: Iterable[Event]) -> dict[str, list[AttemptSpan]]:
    """Per node, its attempts in order. Queue wait = started_at - queued_at; run time = ended_at - started_at."""
    spans: dict[str, list[AttemptSpan]] = {}
    queued: dict[str, float] = {}
    for event in events:
        node = event.node_id
        if node is None:
            continue
        attempts = spans.setdefault(node, [])
        open_attempt = attempts[-1] if attempts and attempts[-1].ended_at is None else None
        if event.target == "QUEUED":
            if open_attempt is not None and open_attempt.started_at is not None:  # preempted: requeued
                open_attempt.ended_at, open_attempt.outcome, open_attempt.reason = event.at, "PREEMPTED", event.reason
            queued[node] = event.at
        elif event.target == "RUNNING":
            attempts.append(AttemptSpan(len(attempts) + 1, queued.pop(node, None), event.at))
        elif open_attempt is not None and event.target != "SKIPPED":
            open_attempt.ended_at, open_attempt.outcome, open_attempt.reason = event.at, event.target, event.reason
    return spans


def critical_path(upstream: Mapping[str, Sequence[str]], spans: Mapping[str, Sequence[AttemptSpan]]) -> list[str]:
    """The chain of nodes that set the submission's end: from the node that ended last, back through the
    upstream node that ended last before it (the one its start waited for)."""
    ends = {n: a[-1].ended_at for n, a in spans.items() if a and a[-1].ended_at is not None}
    if not ends:
        return []
    current = max(ends, key=lambda n: ends[n])
    path = [current]
    while True:
        parents = [p for p in upstream.get(current, ()) if p in ends]
        if not parents:
            return path[::-1]
        current = max(parents, key=lambda p: ends[p])
        path.append(current)


@dataclass(frozen=True)
class SpanSpec:
    """A trace span to export: its key, its parent's key (None for the root), times in epoch seconds."""

    key: str
    parent: str | None
    name: str
    start: float
    end: float
    attributes: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    message: str = ""


def trace_spans(record: SubmissionRecord, events: Sequence[Event],
                pools: Mapping[str, str | None] | None = None) -> list[SpanSpec]:
    """The submission as the root span, each node that ran as a child, each attempt as the node's child."""
    sid, team = record.submission_id, record.team or ""
    end_events = [e for e in events if e.node_id is None and e.target in TERMINAL_SUBMISSION_STATES]
    last = max((e.at for e in events), default=record.created_at)
    ended = end_events[-1] if end_events else None
    base = {"fabric.submission_id": sid, "fabric.pipeline_id": record.pipeline_id, "fabric.team": team}
    spans = [SpanSpec(sid, None, f"submission {record.pipeline_id}", record.created_at,
                      ended.at if ended else last, {**base, "fabric.state": ended.target if ended else "RUNNING"},
                      ok=ended is None or ended.target == "SUCCEEDED", message=ended.reason if ended else "")]
    final = {e.node_id: e for e in events if e.node_id is not None and e.source != EventKind.COST}  # transitions only
    for node_id, attempts in attempt_timeline(events).items():
        if not attempts:
            continue
        state = final[node_id].target
        attrs = {**base, "fabric.node_id": node_id, "fabric.pool": (pools or {}).get(node_id) or "default",
                 "fabric.state": state, "fabric.attempts": len(attempts)}
        node_key = f"{sid}/{node_id}"
        start = attempts[0].queued_at or attempts[0].started_at or record.created_at
        end = attempts[-1].ended_at or last
        spans.append(SpanSpec(node_key, sid, f"node {node_id}", start, end, attrs,
                              ok=state in OK_NODE_STATES, message=final[node_id].reason))
        for span in attempts:
            spans.append(SpanSpec(
                f"{node_key}/{span.attempt}", node_key, f"attempt {node_id}#{span.attempt}",
                span.started_at or start, span.ended_at or end,
                {**attrs, "fabric.attempt": span.attempt, "fabric.outcome": span.outcome or "RUNNING",
                 "fabric.queue_wait_s": round((span.started_at or 0) - span.queued_at, 6) if span.queued_at else 0.0},
                ok=span.outcome in OK_NODE_STATES, message=span.reason))
    return spans
