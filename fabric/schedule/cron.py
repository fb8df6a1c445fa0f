"""When a schedule fires (pure, the clock injected): due ticks after the last one, catch-up, ids per tick."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from fabric.spec.schedules import CatchUp, ScheduleSpec, cron_module

ON_TIME_S = 120.0  # catch_up none still fires a tick this late (a registry busy or restarting for a moment)


@dataclass(frozen=True)
class Due:
    """What a schedule does now: fire these ticks (epoch seconds, oldest first), then record `last_tick`."""

    fire: tuple[float, ...]
    last_tick: float | None  # the newest tick considered: the next check starts after it
    skipped: int = 0  # missed ticks the catch-up policy dropped


def _prev_ticks(spec: ScheduleSpec, now: float, after: float, limit: int) -> list[float]:
    """The newest ticks in (after, now], newest first, at most `limit`, within start/end."""
    croniter = cron_module().croniter
    upper = dt.datetime.fromtimestamp(now, spec.zone)
    if spec.end is not None:
        upper = min(upper, spec.aware(spec.end))
    lower = after
    if spec.start is not None:
        lower = max(lower, spec.aware(spec.start).timestamp() - 1e-6)
    # A tick exactly at `now` counts: step back from just after it.
    it = croniter(spec.cron, upper + dt.timedelta(microseconds=1))
    found: list[float] = []
    while len(found) < limit:
        tick = it.get_prev(dt.datetime).timestamp()
        if tick <= lower:
            break
        found.append(tick)
    return found


def due(spec: ScheduleSpec, last_tick: float | None, since: float, now: float) -> Due:
    """The ticks to fire at `now`, given the last tick handled (None: none yet, count from `since`, when the
    schedule was made). Ticks between are missed ones; the policy keeps none (only a tick at most ON_TIME_S
    old), the latest, or all of them up to max_catch_up (the newest)."""
    if spec.paused:
        return Due((), last_tick)
    after = since if last_tick is None else last_tick
    limit = spec.max_catch_up + 1 if spec.catch_up is CatchUp.ALL else 1
    ticks = _prev_ticks(spec, now, after, limit)
    if not ticks:
        return Due((), last_tick)
    newest = ticks[0]
    if spec.catch_up is CatchUp.ALL:
        keep = ticks[:spec.max_catch_up]
    elif spec.catch_up is CatchUp.LATEST or now - newest <= ON_TIME_S:
        keep = ticks[:1]
    else:
        keep = []
    # How many were dropped is only counted within what was looked at (a long outage is not enumerated).
    return Due(tuple(sorted(keep)), newest, skipped=len(ticks) - len(keep))


def next_fires(spec: ScheduleSpec, last_tick: float | None, since: float, now: float, count: int = 3) -> list[float]:
    """The next `count` ticks after now (and after the last one handled), within start/end; none if paused."""
    if spec.paused:
        return []
    croniter = cron_module().croniter
    start = max(now, since if last_tick is None else last_tick)
    moment = dt.datetime.fromtimestamp(start, spec.zone)
    if spec.start is not None:
        moment = max(moment, spec.aware(spec.start) - dt.timedelta(microseconds=1))
    it = croniter(spec.cron, moment)
    out: list[float] = []
    while len(out) < count:
        tick = it.get_next(dt.datetime)
        if spec.end is not None and tick > spec.aware(spec.end):
            break
        out.append(tick.timestamp())
    return out


def tick_submission_id(team: str | None, pipeline_id: str, schedule: str, tick: float) -> str:
    """The submission id of one tick: the same pipeline, schedule and tick always give the same id, so a
    restarted registry, or a second one, that fires the tick again gets the run already started."""
    stamp = dt.datetime.fromtimestamp(tick, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    key = hashlib.sha256(f"{team or ''}\x1f{pipeline_id}\x1f{schedule}".encode()).hexdigest()[:10]
    return f"sched-{pipeline_id[:48]}-{schedule[:24]}-{key}-{stamp}"
