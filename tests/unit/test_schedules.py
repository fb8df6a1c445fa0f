"""Schedules: validation (422 naming the field), due ticks with an injected clock, catch-up, time zones, ids."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from fabric.errors import SpecError
from fabric.schedule.cron import due, next_fires, tick_submission_id
from fabric.spec.names import SUBMISSION_ID_PATTERN
from fabric.spec.schedules import parse_schedule

pytestmark = pytest.mark.timeout(30)

SUBMISSION_ID_PATTERN_RE = re.compile(SUBMISSION_ID_PATTERN)

UTC = dt.UTC


def at(text: str, zone: Any = UTC) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def every_minute(**extra: Any) -> Any:
    return parse_schedule({"name": "m", "cron": "* * * * *", **extra})


@pytest.mark.parametrize(("raw", "where"), [
    ({"name": "n", "cron": "61 * * * *"}, "cron"),
    ({"name": "n", "cron": "* * * *"}, "cron"),
    ({"name": "n", "cron": "@reboot"}, "cron"),
    ({"name": "n", "cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"name": "n", "cron": "* * * * *", "start": "2024-02-01", "end": "2024-01-01"}, "end"),
    ({"name": "n", "cron": "* * * * *", "catch_up": "some"}, "catch_up"),
    ({"name": "bad name", "cron": "* * * * *"}, "name"),
    ({"name": "n", "cron": "* * * * *", "max_catch_up": 0}, "max_catch_up"),
])
def test_bad_schedules_name_the_field(raw: dict[str, Any], where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_schedule(raw)
    assert [p.where for p in info.value.problems] == [where]


def test_on_time_ticks_fire_once_each() -> None:
    spec = every_minute()
    since = at("2024-01-01T00:00:30")
    assert due(spec, None, since, at("2024-01-01T00:00:59")).fire == ()
    first = due(spec, None, since, at("2024-01-01T00:01:00"))  # a tick exactly now fires
    assert first.fire == (at("2024-01-01T00:01:00"),) and first.last_tick == at("2024-01-01T00:01:00")
    assert due(spec, first.last_tick, since, at("2024-01-01T00:01:40")).fire == ()  # not twice
    assert due(spec, first.last_tick, since, at("2024-01-01T00:02:01")).fire == (at("2024-01-01T00:02:00"),)


def _hm(ticks: tuple[float, ...]) -> list[str]:
    return [dt.datetime.fromtimestamp(t, UTC).strftime("%H:%M") for t in ticks]


@pytest.mark.parametrize(("policy", "minutely", "hourly"), [
    ("none", ["00:03"], []),
    ("latest", ["00:03"], ["03:00"]),
    ("all", ["00:01", "00:02", "00:03"], ["01:00", "02:00", "03:00"])])
def test_catch_up_after_a_stop(policy: str, minutely: list[str], hourly: list[str]) -> None:
    last = at("2024-01-01T00:00:00")
    # Down for three and a half minutes: the newest tick (00:03) is on time, two were missed.
    result = due(every_minute(catch_up=policy), last, last, at("2024-01-01T00:03:30"))
    assert _hm(result.fire) == minutely and result.last_tick == at("2024-01-01T00:03:00")
    # An hourly schedule down for three and a half hours: even the newest tick is late.
    hours = parse_schedule({"name": "h", "cron": "0 * * * *", "catch_up": policy})
    result = due(hours, last, last, at("2024-01-01T03:30:00"))
    assert _hm(result.fire) == hourly and result.last_tick == at("2024-01-01T03:00:00")
    assert result.skipped == (1 if policy == "none" else 0)


def test_catch_up_all_is_bounded_and_none_keeps_a_tick_that_is_only_a_little_late() -> None:
    spec = every_minute(catch_up="all", max_catch_up=3)
    result = due(spec, at("2024-01-01T00:00:00"), 0, at("2024-01-02T00:00:00"))  # a day down: 1440 missed
    assert result.fire == (at("2024-01-01T23:58:00"), at("2024-01-01T23:59:00"), at("2024-01-02T00:00:00"))
    late = due(every_minute(catch_up="none"), at("2024-01-01T00:00:00"), 0, at("2024-01-01T00:01:30"))
    assert late.fire == (at("2024-01-01T00:01:00"),)


def test_time_zone_start_end_and_pause() -> None:
    spec = parse_schedule({"name": "open", "cron": "30 9 * * MON-FRI", "timezone": "America/New_York",
                           "start": "2024-03-11", "end": "2024-03-13T23:00"})
    fires = next_fires(spec, None, 0, at("2024-03-08T00:00:00"), 5)
    # 09:30 in New York: 13:30 UTC after the DST change of March 10th; none before start, none after end.
    assert [dt.datetime.fromtimestamp(t, UTC).isoformat() for t in fires] == [
        "2024-03-11T13:30:00+00:00", "2024-03-12T13:30:00+00:00", "2024-03-13T13:30:00+00:00"]
    assert due(spec, None, 0, at("2024-03-08T14:30:00")).fire == ()  # before start
    assert due(spec, at("2024-03-13T13:30:00"), 0, at("2024-03-20T00:00:00")).fire == ()  # after end
    paused = parse_schedule({"name": "p", "cron": "* * * * *", "paused": True})
    assert due(paused, None, 0, at("2024-01-01T00:10:00")).fire == () and next_fires(paused, None, 0, 0) == []


def test_tick_ids_are_stable_valid_and_distinct() -> None:
    tick = at("2024-01-01T06:00:00")
    one = tick_submission_id("quant", "factors", "nightly", tick)
    assert one == tick_submission_id("quant", "factors", "nightly", tick)
    assert SUBMISSION_ID_PATTERN_RE.match(one) and one.endswith("20240101T060000Z")
    others = {tick_submission_id("ml", "factors", "nightly", tick), tick_submission_id("quant", "factors", "n2", tick),
              tick_submission_id("quant", "factors", "nightly", tick + 60),
              tick_submission_id(None, "p" * 128, "s" * 64, tick)}
    assert one not in others and len(others) == 4
    assert all(SUBMISSION_ID_PATTERN_RE.match(i) for i in others)
