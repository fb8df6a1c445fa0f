"""Which webhook messages a run's recorded events mean, their signed bodies, and the delivery retry schedule.

Pure (an injected clock, no network): `fabric.execute.notify` feeds it the events the registry records and sends
what it returns. Every message has a delivery id derived from the submission, the event, the node and the
webhook, so the same event replayed after a registry restart is the same message, and the audit's record of
delivered ids keeps it from going out twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fabric.record.store import Event, SubmissionRecord
from fabric.spec.notify import NotifyEvent, NotifySpec, Webhook
from fabric.spec.quantities import parse_duration
from fabric.states import TERMINAL_SUBMISSION_STATES, EventKind

SIGNATURE_HEADER = "X-Fabric-Signature"  # "sha256=<hex>" of HMAC-SHA256(secret, "<timestamp>.<body>")
TIMESTAMP_HEADER = "X-Fabric-Timestamp"  # unix seconds of this attempt: a receiver refuses old ones (replays)
DELIVERY_HEADER = "X-Fabric-Delivery"  # the delivery id: the same on every retry and after a restart
EVENT_HEADER = "X-Fabric-Event"
FIRST_RETRY_S, RETRY_FACTOR, LONGEST_RETRY_S = 1.0, 2.0, 300.0
_NODE_FAILED = frozenset({"FAILED", "TIMED_OUT"})


@dataclass(frozen=True)
class Notice:
    """One message to one webhook."""

    delivery_id: str
    event: NotifyEvent
    submission_id: str
    node_id: str | None
    webhook: Webhook
    body: bytes  # the JSON body, identical on every attempt
    at: float = 0.0  # when the event happened


@dataclass(frozen=True)
class RunNotify:
    """What one submission asked to be told, read from its record."""

    submission_id: str
    pipeline_id: str
    team: str | None
    labels: Mapping[str, str]
    created_at: float
    webhooks: tuple[Webhook, ...]
    deadline: float | None = None  # slo.deadline, seconds after created_at
    queue_wait: float | None = None


def run_notify(record: SubmissionRecord) -> RunNotify | None:
    """The record's notify sections (the pipeline's and the submission's, both apply); None without webhooks."""
    sections = [NotifySpec.model_validate(s) for s in (record.spec.get("notify"), record.runtime_params.get("notify"))
                if s is not None]
    webhooks = tuple({(h.url, h.secret): h for s in sections for h in s.webhooks}.values())  # a repeat once
    if not webhooks:
        return None
    waits = [s.queue_wait for s in sections if s.queue_wait is not None]
    slo = record.spec.get("slo") or {}
    deadline = parse_duration(slo["deadline"]) if slo.get("deadline") is not None else None
    return RunNotify(record.submission_id, record.pipeline_id, record.team, dict(record.labels), record.created_at,
                     webhooks, deadline, waits[-1] if waits else None)  # the submission's threshold wins


def delivery_id(submission_id: str, event: NotifyEvent, node_id: str | None, webhook: Webhook) -> str:
    text = "\0".join((submission_id, str(event), node_id or "", webhook.url, webhook.secret))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The X-Fabric-Signature value: the timestamp is signed with the body, so an old message cannot be replayed
    with a new timestamp."""
    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, header: str, now: float, tolerance_s: float = 300.0) -> bool:
    """What a receiver checks (a Python receiver may import this): the signature, and that it is recent."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    return abs(now - stamp) <= tolerance_s and hmac.compare_digest(signature(secret, stamp, body), header)


def retry_delay(attempt: int, first: float = FIRST_RETRY_S, factor: float = RETRY_FACTOR,
                longest: float = LONGEST_RETRY_S) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): 1, 2, 4, ... up to `longest`."""
    return min(first * factor ** (attempt - 1), longest)


def worth_retrying(status: int | None) -> bool:
    """A network error or timeout (None), 408, 429 and 5xx may pass; another 4xx is the receiver's refusal."""
    return status is None or status in (408, 429) or status >= 500


def origin(url: str) -> str:
    """What the audit keeps of a URL: scheme, host and port. Paths and queries often carry a token (chat webhooks)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def audit_reason(notice: Notice, **facts: Any) -> str:
    return json.dumps({"delivery_id": notice.delivery_id, "url": origin(notice.webhook.url), **facts},
                      sort_keys=True, separators=(",", ":"))


@dataclass
class History:
    """One delivery's record in the audit: attempts made, and whether it is finished (delivered or given up)."""

    attempts: int = 0
    finished: bool = False


def delivery_history(audit: Iterable[Event]) -> dict[str, History]:
    """Per delivery id, from a submission's NOTIFY_SUBJECT rows."""
    found: dict[str, History] = {}
    for event in audit:
        try:
            delivery = json.loads(event.reason)["delivery_id"]
        except (ValueError, KeyError, TypeError):
            continue
        history = found.setdefault(delivery, History())
        history.attempts = max(history.attempts, event.attempt)
        history.finished |= event.target in (EventKind.NOTIFY_DELIVERED, EventKind.NOTIFY_GAVE_UP)
    return found


@dataclass
class _Run:
    notify: RunNotify
    queued: dict[str, float] = field(default_factory=dict)  # ready nodes, oldest first
    fired: set[tuple[NotifyEvent, str | None]] = field(default_factory=set)


class NoticeTracker:
    """Turns a run's events (live, or replayed after a restart) and the clock into notices, each at most once."""

    def __init__(self, ended_memory: int = 10_000) -> None:
        self._runs: dict[str, _Run] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()  # a replayed end must not start the run anew
        self._ended_memory = ended_memory

    def watching(self, submission_id: str) -> bool:
        return submission_id in self._runs

    def ended(self, submission_id: str) -> bool:
        return submission_id in self._ended

    def watch(self, notify: RunNotify) -> None:
        if notify.submission_id not in self._runs and notify.submission_id not in self._ended:
            self._runs[notify.submission_id] = _Run(notify)

    def feed(self, event: Event) -> list[Notice]:
        run = self._runs.get(event.submission_id)
        if run is None:
            return []
        out: list[Notice] = []
        if event.node_id is not None:
            node = event.node_id
            if event.target == "QUEUED":
                run.queued.pop(node, None)  # re-queued: it goes to the back
                run.queued[node] = event.at
                return out
            queued_at = run.queued.pop(node, None)
            if (event.target == "RUNNING" and queued_at is not None and run.notify.queue_wait is not None
                    and event.at - queued_at > run.notify.queue_wait):  # replayed: the wait was over the threshold
                out += self._fire(run, NotifyEvent.QUEUE_WAIT, None, node, "RUNNING", event.at,
                                  f"node {node} waited {event.at - queued_at:.0f}s to be released")
            if event.target in _NODE_FAILED:
                out += self._fire(run, NotifyEvent.NODE_FAILURE, node, node, event.target, event.at, event.reason)
            if event.target == "TIMED_OUT":
                out += self._fire(run, NotifyEvent.SLA_MISS, None, node, event.target, event.at,
                                  f"node {node} ran past its max_runtime: {event.reason}")
            return out
        if event.source != "RUNNING" or event.target not in TERMINAL_SUBMISSION_STATES:
            return out
        deadline = run.notify.deadline
        if event.target == "TIMED_OUT":
            out += self._fire(run, NotifyEvent.SLA_MISS, None, None, event.target, event.at,
                              f"the run ran past its max_runtime: {event.reason}")
        elif deadline is not None and event.at > run.notify.created_at + deadline:
            out += self._deadline(run, event.target, event.at)
        ended = NotifyEvent.SUCCESS if event.target == "SUCCEEDED" else NotifyEvent.FAILURE
        out += self._fire(run, ended, None, None, event.target, event.at, event.reason)
        del self._runs[event.submission_id]
        self._ended[event.submission_id] = None
        while len(self._ended) > self._ended_memory:
            self._ended.popitem(last=False)
        return out

    def tick(self, now: float) -> list[Notice]:
        """What the clock alone means: a deadline passed while running, a ready node waiting too long."""
        out: list[Notice] = []
        for run in self._runs.values():
            deadline, wait = run.notify.deadline, run.notify.queue_wait
            if deadline is not None and now > run.notify.created_at + deadline:
                out += self._deadline(run, "RUNNING", now)
            if wait is not None and run.queued and (NotifyEvent.QUEUE_WAIT, None) not in run.fired:
                node, at = next(iter(run.queued.items()))
                if now - at > wait:
                    out += self._fire(run, NotifyEvent.QUEUE_WAIT, None, node, "QUEUED", now,
                                      f"node {node} has waited {now - at:.0f}s to be released "
                                      f"(notify.queue_wait {wait:g}s)")
        return out

    def next_due(self) -> float | None:
        """The earliest time `tick` could have something to say (None: only new events can)."""
        times = []
        for run in self._runs.values():
            if run.notify.deadline is not None and (NotifyEvent.SLA_MISS, None) not in run.fired:
                times.append(run.notify.created_at + run.notify.deadline)
            if run.notify.queue_wait is not None and run.queued and (NotifyEvent.QUEUE_WAIT, None) not in run.fired:
                times.append(next(iter(run.queued.values())) + run.notify.queue_wait)
        return min(times) if times else None

    def _deadline(self, run: _Run, state: str, at: float) -> list[Notice]:
        deadline = run.notify.deadline or 0.0
        return self._fire(run, NotifyEvent.SLA_MISS, None, None, state, at,
                          f"still running {deadline:g}s after its start: slo.deadline passed")

    def _fire(self, run: _Run, event: NotifyEvent, key: str | None, node_id: str | None, state: str, at: float,
              reason: str) -> list[Notice]:
        """The notices of `event` (once per run and `key`: a node id, or None for once per run)."""
        if (event, key) in run.fired:
            return []
        run.fired.add((event, key))
        notify = run.notify
        out = []
        for hook in notify.webhooks:
            if event not in hook.events:
                continue
            delivery = delivery_id(notify.submission_id, event, key, hook)
            payload = {"delivery_id": delivery, "event": str(event), "submission_id": notify.submission_id,
                       "pipeline_id": notify.pipeline_id, "team": notify.team, "labels": dict(notify.labels),
                       "node_id": node_id, "state": state, "at": at, "reason": reason[:2000]}
            body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
            out.append(Notice(delivery, event, notify.submission_id, node_id, hook, body, at))
        return out
