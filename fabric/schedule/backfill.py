"""Runs started by a backfill or an event trigger (pure): their ids, what "the identical run" is, and progress."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fabric.errors import ErrorCode, FabricError

BACKFILL_LABEL = "fabric.backfill"  # on each run of a backfill: its backfill id
IDENTITY_LABEL = "fabric.backfill.identity"  # the run's identity: a later backfill skips it once it SUCCEEDED
TRIGGER_LABEL = "fabric.trigger"
MAX_KEY_LENGTH = 200
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no spaces (a header value)

PENDING, SKIPPED = "PENDING", "SKIPPED"  # a date not started yet; a date whose identical run already succeeded
RUNNING, SUCCEEDED = "RUNNING", "SUCCEEDED"
STATES = (PENDING, RUNNING, SUCCEEDED, "FAILED", "CANCELLED", SKIPPED)


def new_backfill_id(now: float | None = None) -> str:
    """`bf-YYYYMMDD-HHMMSS-xxxxxx` (UTC): made once by the client, so a retried call makes one backfill."""
    return time.strftime("bf-%Y%m%d-%H%M%S-", time.gmtime(time.time() if now is None else now)) + secrets.token_hex(3)


def run_id(backfill_id: str, day: dt.date) -> str:
    """The submission id of one date of a backfill: a restarted registry starting the date again gets the run
    already started, never a second one."""
    return f"{backfill_id}-{day:%Y%m%d}"


def identity(pipeline_id: str, spec_hash: str, params: Mapping[str, Any]) -> str:
    """What makes two runs identical: the pipeline, the version's spec (by hash) and every param value."""
    text = json.dumps([pipeline_id, spec_hash, dict(params)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def trigger_submission_id(pipeline_id: str, key: str) -> str:
    """The submission id of an event trigger with idempotency key `key` (a team's is `team:` this): the same
    pipeline and key always give the same id, so a webhook delivered twice starts one run."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise FabricError("the idempotency key must be 1 to 200 printable ASCII characters, no spaces",
                          code=ErrorCode.SPEC_FIELD, where="Idempotency-Key",
                          fix="send a header like 'Idempotency-Key: delivery-8f14e45f' (the event's own id)")
    digest = hashlib.sha256(f"{pipeline_id}\x1f{key}".encode()).hexdigest()[:20]
    return f"trig-{pipeline_id[:48]}-{digest}"


@dataclass(frozen=True)
class Progress:
    """Where a backfill stands: each date's state, the counts per state, what to start now, its own state."""

    rows: tuple[tuple[dt.date, str], ...]
    counts: dict[str, int]
    start: tuple[dt.date, ...] = ()  # dates to start now, oldest first
    state: str = RUNNING
    skip: tuple[dt.date, ...] = field(default=())  # pending dates found already done by an identical run


def progress(dates: Sequence[dt.date], own: Mapping[dt.date, str], done_elsewhere: Collection[dt.date],
             max_active: int, cancelled: bool = False) -> Progress:
    """`own`: the state of each date's run started by this backfill; `done_elsewhere`: dates whose identical
    run SUCCEEDED outside it. Pending dates start oldest first while fewer than `max_active` run. The backfill
    is CANCELLED once cancelled, RUNNING while a date is pending or running, then SUCCEEDED when every date
    succeeded (or was skipped), else FAILED."""
    rows: list[tuple[dt.date, str]] = []
    running = sum(1 for s in own.values() if s == RUNNING)
    start: list[dt.date] = []
    skip: list[dt.date] = []
    for day in dates:
        state = own.get(day)
        if state is None:
            if day in done_elsewhere:
                state = SKIPPED
                skip.append(day)
            else:
                state = PENDING
                if not cancelled and running + len(start) < max_active:
                    start.append(day)
        rows.append((day, state))
    counts = {s: 0 for s in STATES}
    for _, state in rows:
        counts[state] = counts.get(state, 0) + 1
    if cancelled:
        overall = "CANCELLED"
    elif counts[PENDING] or counts[RUNNING]:
        overall = RUNNING
    elif counts[SUCCEEDED] + counts[SKIPPED] == len(rows):
        overall = SUCCEEDED
    else:
        overall = "FAILED"
    return Progress(tuple(rows), counts, tuple(start), overall, tuple(skip))


def date_of(submission_id: str) -> dt.date | None:
    """The date a backfill's run id ends with (`run_id`), or None."""
    try:
        return dt.datetime.strptime(submission_id.rsplit("-", 1)[-1], "%Y%m%d").date()
    except ValueError:
        return None
