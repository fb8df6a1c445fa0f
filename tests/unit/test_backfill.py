"""Backfills and event triggers without Ray: dates, ids and counts (pure), bad input named by field, and the
registry's `Backfills` over a real SQLite store with the catalogue's stand-in submit (tests/unit/test_catalogue.py):
at most N at once, the next dates as earlier ones end, a repeat skips what succeeded, cancel as a whole, restart."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from fabric.actors.backfills import Backfills
from fabric.errors import ErrorCode, FabricError, SpecError
from fabric.schedule.backfill import (
    BACKFILL_LABEL,
    date_of,
    identity,
    new_backfill_id,
    progress,
    run_id,
    trigger_submission_id,
)
from fabric.spec.backfills import MAX_DATES, parse_backfill, step_dates
from fabric.spec.names import SUBMISSION_ID_PATTERN
from tests.unit.test_catalogue import SPEC, Harness

pytestmark = pytest.mark.timeout(60)
D = dt.date


def test_dates_by_day_week_and_business_day() -> None:
    assert step_dates(D(2024, 1, 1), D(2024, 1, 3), "1d") == [D(2024, 1, 1), D(2024, 1, 2), D(2024, 1, 3)]
    assert step_dates(D(2024, 1, 1), D(2024, 1, 29), "2w") == [D(2024, 1, 1), D(2024, 1, 15), D(2024, 1, 29)]
    # Friday 5 Jan to Tuesday 9 Jan 2024: the weekend is not a business day; a Saturday start moves to Monday.
    assert step_dates(D(2024, 1, 5), D(2024, 1, 9), "1b") == [D(2024, 1, 5), D(2024, 1, 8), D(2024, 1, 9)]
    assert step_dates(D(2024, 1, 6), D(2024, 1, 12), "2b") == [D(2024, 1, 8), D(2024, 1, 10), D(2024, 1, 12)]
    assert step_dates(D(2024, 1, 1), D(2024, 1, 1), "7d") == [D(2024, 1, 1)]
    assert len(parse_backfill({"start": "2024-01-01", "end": "2024-12-31"}).dates()) == 366  # a leap year


@pytest.mark.parametrize(("raw", "where"), [
    ({"start": "2024-02-01", "end": "2024-01-01"}, "end"),
    ({"start": "2024-01-01", "end": "2024-01-31", "step": "1x"}, "step"),
    ({"start": "2024-01-01", "end": "2024-01-31", "step": "0d"}, "step"),
    ({"start": "2024-01-01", "end": "2024-01-31", "max_active": 0}, "max_active"),
    ({"start": "2020-01-01", "end": "2024-12-31"}, "end"),  # over MAX_DATES dates
    ({"start": "2024-13-01", "end": "2024-12-31"}, "start"),
    ({"start": "2024-01-01", "end": "2024-01-31", "params": {"as_of": "2024-01-01"}}, "params"),
    ({"start": "2024-01-01", "end": "2024-01-31", "backfill_id": "no spaces"}, "backfill_id"),
    ({"start": "2024-01-01", "end": "2024-01-31", "colour": "red"}, "colour"),
])
def test_bad_backfills_name_the_field(raw: dict[str, Any], where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_backfill(raw)
    assert where in [p.where for p in info.value.problems], info.value.problems


def test_the_cap_is_on_dates_not_days() -> None:
    assert len(parse_backfill({"start": "2000-01-01", "end": "2019-01-01", "step": "1w"}).dates()) <= MAX_DATES


def test_ids_are_deterministic_valid_and_distinct() -> None:
    import re

    bid = new_backfill_id(0.0)
    assert re.match(r"^bf-19700101-000000-[0-9a-f]{6}$", bid)
    one, two = run_id(bid, D(2024, 1, 1)), run_id(bid, D(2024, 1, 2))
    assert one != two and date_of(one) == D(2024, 1, 1) and date_of("sub-x") is None
    assert identity("p", "h", {"as_of": "2024-01-01", "n": 1}) == identity("p", "h", {"n": 1, "as_of": "2024-01-01"})
    assert identity("p", "h", {"as_of": "2024-01-01"}) != identity("p", "h2", {"as_of": "2024-01-01"})
    key = trigger_submission_id("factors", "evt-1")
    assert key == trigger_submission_id("factors", "evt-1") != trigger_submission_id("factors", "evt-2")
    assert key != trigger_submission_id("other", "evt-1")
    assert re.match(SUBMISSION_ID_PATTERN, key)
    assert re.match(SUBMISSION_ID_PATTERN, trigger_submission_id("p" * 64, "k"))
    for bad in ("", "has space", "x" * 201, "é"):
        with pytest.raises(FabricError) as info:
            trigger_submission_id("factors", bad)
        assert info.value.where == "Idempotency-Key"


def test_progress_counts_starts_oldest_first_and_ends() -> None:
    days = [D(2024, 1, d) for d in range(1, 7)]
    found = progress(days, {days[0]: "RUNNING"}, {days[1]}, max_active=2)
    assert found.start == (days[2],) and found.state == "RUNNING"
    assert found.counts == {"PENDING": 4, "RUNNING": 1, "SUCCEEDED": 0, "FAILED": 0, "CANCELLED": 0, "SKIPPED": 1}
    done = progress(days, {d: "SUCCEEDED" for d in days[2:]}, set(days[:2]), max_active=2)
    assert done.state == "SUCCEEDED" and done.start == ()
    failed = progress(days, {**{d: "SUCCEEDED" for d in days[1:]}, days[0]: "FAILED"}, set(), max_active=2)
    assert failed.state == "FAILED"
    cancelled = progress(days, {days[0]: "RUNNING"}, set(), max_active=2, cancelled=True)
    assert cancelled.state == "CANCELLED" and cancelled.start == ()


class Bench(Harness):
    """The catalogue harness with the registry's Backfills over it, and a way to end runs."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.backfills = Backfills(self.store, self.catalogue, self.cancel, lambda: 1000.0)
        self.catalogue.register(SPEC, {"max_active_runs": 10}, "quant")

    def runs(self, bid: str) -> dict[str, str]:
        return {r.submission_id: r.state for r in self.store.list_submissions(labels={BACKFILL_LABEL: bid})}

    def finish(self, bid: str, state: str = "SUCCEEDED") -> None:
        for sid, s in self.runs(bid).items():
            if s == "RUNNING":
                self.store.set_state(sid, state)


REQUEST = {"start": "2024-01-01", "end": "2024-01-06", "max_active": 2, "params": {"n": 3}, "backfill_id": "bf-a"}


def test_a_backfill_runs_n_at_a_time_then_ends(tmp_path: Path) -> None:
    bench = Bench(tmp_path / "f.db")
    made = bench.backfills.create("factors", dict(REQUEST), "quant")
    assert made["created"] and made["total"] == 6 and made["counts"]["RUNNING"] == 2
    assert sorted(bench.runs("bf-a")) == ["bf-a-20240101", "bf-a-20240102"]  # oldest first
    record = bench.store.get_submission("bf-a-20240101")
    assert record is not None and record.runtime_params["params"] == {"as_of": "2024-01-01", "n": 3}
    bench.backfills.pump()
    assert len(bench.runs("bf-a")) == 2  # none ended: none more
    bench.finish("bf-a")
    bench.backfills.pump()
    view = bench.backfills.get("bf-a", "quant")
    assert view["counts"]["SUCCEEDED"] == 2 and view["counts"]["RUNNING"] == 2 and view["counts"]["PENDING"] == 2
    bench.finish("bf-a", "FAILED")
    bench.backfills.pump()
    bench.finish("bf-a")
    bench.backfills.pump()
    view = bench.backfills.get("bf-a", "quant")
    assert view["state"] == "FAILED" and view["counts"]["FAILED"] == 2 and view["counts"]["SUCCEEDED"] == 4
    assert [b["state"] for b in bench.backfills.rows(None, "quant")] == ["FAILED"]
    # The same request again is the same backfill; another request under its id is a conflict.
    assert not bench.backfills.create("factors", dict(REQUEST), "quant")["created"]
    with pytest.raises(FabricError) as info:
        bench.backfills.create("factors", {**REQUEST, "max_active": 3}, "quant")
    assert info.value.code == ErrorCode.IDEMPOTENCY_CONFLICT and info.value.where == "backfill_id"
    # A new backfill of the same dates skips the four that succeeded and runs the two that failed.
    again = bench.backfills.create("factors", {**REQUEST, "backfill_id": "bf-b"}, "quant")
    assert again["counts"]["SKIPPED"] == 4 and again["counts"]["RUNNING"] == 2
    assert sorted(bench.runs("bf-b")) == ["bf-b-20240103", "bf-b-20240104"]
    # Other params are another run: nothing is skipped.
    other = bench.backfills.create("factors", {**REQUEST, "backfill_id": "bf-c", "params": {"n": 4}}, "quant")
    assert other["counts"]["SKIPPED"] == 0
    # Another team sees none of it.
    assert bench.backfills.rows(None, "other") == []
    with pytest.raises(FabricError) as info:
        bench.backfills.get("bf-a", "other")
    assert info.value.code == ErrorCode.NOT_FOUND


def test_cancel_as_a_whole_and_a_restart_carries_on(tmp_path: Path) -> None:
    bench = Bench(tmp_path / "f.db")
    bench.backfills.create("factors", dict(REQUEST), "quant")
    # A new registry (a restart) over the same store starts no date twice and carries on.
    restarted = Backfills(bench.store, bench.catalogue, bench.cancel, lambda: 2000.0)
    restarted.pump()
    assert len(bench.runs("bf-a")) == 2
    bench.finish("bf-a")
    restarted.pump()
    assert sorted(bench.runs("bf-a"))[-2:] == ["bf-a-20240103", "bf-a-20240104"]
    view = restarted.cancel("bf-a", "quant")
    assert view["state"] == "CANCELLED" and sorted(bench.cancelled) == ["bf-a-20240103", "bf-a-20240104"]
    assert view["counts"] == {"PENDING": 2, "RUNNING": 0, "SUCCEEDED": 2, "FAILED": 0, "CANCELLED": 2, "SKIPPED": 0}
    restarted.pump()
    assert len(bench.runs("bf-a")) == 4  # nothing more starts


def test_the_pipelines_max_active_runs_holds_a_backfill_back(tmp_path: Path) -> None:
    bench = Bench(tmp_path / "f.db")
    bench.catalogue.register(SPEC, {"max_active_runs": 1, "overlap": "cancel_older"}, "quant")
    made = bench.backfills.create("factors", dict(REQUEST), "quant")
    assert made["counts"]["RUNNING"] == 1 and bench.cancelled == []  # waits: never cancels its own runs


@pytest.mark.parametrize(("change", "where", "code"), [
    ({"date_param": "n", "params": {}}, "date_param", ErrorCode.PARAM_TYPE),
    ({"date_param": "day"}, "date_param", ErrorCode.PARAM_UNKNOWN),
    ({"params": {"nope": 1}}, "params.nope", ErrorCode.PARAM_UNKNOWN),
    ({"params": {"n": "many"}}, "params.n", ErrorCode.PARAM_TYPE),
    ({"version": 9}, "version", ErrorCode.NOT_FOUND),
])
def test_bad_params_name_the_field_and_store_nothing(tmp_path: Path, change: dict[str, Any], where: str,
                                                     code: ErrorCode) -> None:
    bench = Bench(tmp_path / "f.db")
    with pytest.raises(FabricError) as info:
        bench.backfills.create("factors", {**REQUEST, **change}, "quant")
    found = [(p.where, p.code) for p in info.value.problems] or [(info.value.where, info.value.code)]
    assert (where, code) in found
    assert bench.backfills.rows(None, "quant") == [] and bench.runs("bf-a") == {}


def test_a_trigger_key_starts_one_run_of_the_version_it_started(tmp_path: Path) -> None:
    bench = Bench(tmp_path / "f.db")
    runtime = {"submission_id": trigger_submission_id("factors", "evt-1"), "params": {"n": 2}}
    first = bench.catalogue.run("factors", None, dict(runtime), "quant")
    bench.catalogue.register({**SPEC, "description": "v2"}, None, "quant")  # a new latest version
    again = bench.catalogue.run("factors", None, dict(runtime), "quant")
    assert first["created"] and not again["created"] and again["submission_id"] == first["submission_id"]
    assert again["version"] == first["version"] == 1


def test_each_date_starts_on_the_teams_grants_of_now(tmp_path: Path) -> None:
    """A backfill made while the team could claim high priority stops starting dates once an admin lowers it."""
    import copy

    import yaml

    from fabric.actors.schedules import tokens_file_grants

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [], "grants": {"quant": {"max_priority": "high"}}}))
    grants_of = tokens_file_grants(str(tokens))
    bench = Bench(tmp_path / "f.db")
    bench.catalogue.register({**copy.deepcopy(SPEC), "slo": {"priority": "high"}}, None, "quant", grants_of("quant"))
    backfills = Backfills(bench.store, bench.catalogue, bench.cancel, lambda: 1000.0, grants_of)
    made = backfills.create("factors", dict(REQUEST), "quant", grants_of("quant"))
    assert made["counts"]["RUNNING"] == 2
    tokens.write_text(yaml.safe_dump({"tokens": [], "grants": {"quant": {"max_priority": "normal"}}}))
    bench.finish("bf-a")
    backfills.pump()
    view = backfills.get("bf-a", "quant")
    assert view["counts"]["FAILED"] == 4 and view["state"] == "FAILED" and len(bench.runs("bf-a")) == 2
    assert "max_priority is 'normal'" in view["runs"][2]["error"]
