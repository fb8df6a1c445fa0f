"""The `queue` overlap policy: a start at max_active_runs waits (bounded, first in first out) and starts once a
run ends; a schedule's ticks on a fake clock. The catalogue is over a real SQLite store (tests/unit/test_catalogue)."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from fabric.actors.schedules import Scheduler
from fabric.errors import ErrorCode, FabricError, SpecError
from fabric.schedule.overlap import decide
from fabric.schedule.startqueue import MAX_QUEUED, StartQueue
from fabric.spec.catalogue import Overlap
from tests.unit.test_catalogue import SPEC, Harness

pytestmark = pytest.mark.timeout(60)


def _at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def test_the_start_queue_is_fifo_bounded_and_idempotent() -> None:
    now = [10.0]
    queue = StartQueue(lambda: now[0], bound=2)
    assert queue.offer((None, "p"), "s1", 1, "r1") == 1
    now[0] = 11.0
    assert queue.offer((None, "p"), "s2", 1, "r2") == 2
    assert queue.offer((None, "p"), "s1", 1, "r1") == 1  # a retried start keeps its place
    assert queue.offer((None, "p"), "s3", 1, "r3") is None  # full: nothing queued
    assert queue.offer(("quant", "p"), "s3", 1, "r3") == 1  # another team's line
    assert [q.queued_at for q in queue.waiting((None, "p"))] == [10.0, 11.0]
    assert queue.take((None, "p"), 0) == [] and queue.take((None, "p"), -1) == []
    assert [q.submission_id for q in queue.take((None, "p"), 1)] == ["s1"]
    assert [q.submission_id for q in queue.take((None, "p"), 5)] == ["s2"]
    assert queue.lines() == [("quant", "p")]
    assert decide([(1.0, "a")], 1, Overlap.QUEUE).queue and not decide([(1.0, "a")], 1, Overlap.QUEUE).start
    assert decide([(1.0, "a")], 2, Overlap.QUEUE).start


@pytest.fixture
def harness(tmp_path: Path) -> Any:
    h = Harness(tmp_path / "fabric.db")
    h.catalogue.register(copy.deepcopy(SPEC), {"max_active_runs": 1, "overlap": "queue"}, None)
    yield h
    h.store.close()


def test_a_start_at_the_limit_waits_and_starts_when_the_run_ends(harness: Harness) -> None:
    cat = harness.catalogue
    first = cat.run("factors", None, {"submission_id": "r1"}, None)
    assert first["created"] and not first.get("queued")
    second = cat.run("factors", None, {"submission_id": "r2", "params": {"n": 7}}, None)
    assert second["queued"] and second["position"] == 1 and second["submission_id"] == "r2"
    assert not second["skipped"] and "r1" in second["reason"]
    assert harness.store.get_submission("r2") is None  # not started
    assert [(r["submission_id"], r["state"]) for r in cat.runs("factors", 10, None)][:2] == [
        ("r2", "QUEUED"), ("r1", "RUNNING")]
    assert cat.run("factors", None, {"submission_id": "r2", "params": {"n": 7}}, None)["position"] == 1
    with pytest.raises(FabricError) as conflict:  # the same key with other params: as for a started run
        cat.run("factors", None, {"submission_id": "r2", "params": {"n": 8}}, None)
    assert conflict.value.code == ErrorCode.IDEMPOTENCY_CONFLICT and conflict.value.where == "submission_id"
    with pytest.raises(SpecError):  # a bad start is a 422 now, not a queued failure later
        cat.run("factors", None, {"submission_id": "r3", "params": {"n": "many"}}, None)
    assert cat.start_queued() == []  # r1 still runs
    harness.store.set_state("r1", "SUCCEEDED")
    [started] = cat.start_queued()
    assert started["submission_id"] == "r2" and started["created"]
    record = harness.store.get_submission("r2")
    assert record is not None and record.runtime_params["params"]["n"] == 7
    assert cat.start_queued() == []  # r2 runs now: nothing else starts


def test_the_queue_is_bounded_and_first_come_first_started(harness: Harness) -> None:
    cat = harness.catalogue
    cat.run("factors", None, {"submission_id": "r0"}, None)
    places = [cat.run("factors", None, {"submission_id": f"q{i}"}, None) for i in range(MAX_QUEUED + 1)]
    assert [p.get("position") for p in places[:MAX_QUEUED]] == list(range(1, MAX_QUEUED + 1))
    over = places[-1]
    assert over["skipped"] and over["submission_id"] is None and f"{MAX_QUEUED} starts already wait" in over["reason"]
    harness.store.set_state("r0", "FAILED")
    # A slot is free, but q0..q9 wait: a new start queues behind them rather than jumping the line.
    late = cat.run("factors", None, {"submission_id": "late"}, None)
    assert late["skipped"]  # the line is full
    started = []
    for _ in range(MAX_QUEUED):
        [one] = cat.start_queued()
        started.append(one["submission_id"])
        harness.store.set_state(one["submission_id"], "SUCCEEDED")
    assert started == [f"q{i}" for i in range(MAX_QUEUED)]


def test_a_schedule_tick_at_the_limit_is_queued_and_runs_after_the_previous_one(harness: Harness) -> None:
    clock = [_at("2024-01-01T00:00:30")]
    scheduler = Scheduler(harness.store, harness.catalogue, lambda: clock[0])
    scheduler.put("factors", {"name": "minutely", "cron": "* * * * *"}, None)
    clock[0] = _at("2024-01-01T00:01:01")
    [first] = scheduler.fire_due()
    assert first["created"]
    clock[0] = _at("2024-01-01T00:02:01")
    [second] = scheduler.fire_due()  # the 00:01 run is still active
    assert second["queued"] and second["submission_id"].endswith("20240101T000200Z")
    assert scheduler.fire_due() == []  # the tick was handled: queued once, never fired again
    assert harness.catalogue.start_queued() == []
    harness.store.set_state(first["submission_id"], "SUCCEEDED")
    clock[0] = _at("2024-01-01T00:02:30")
    [started] = harness.catalogue.start_queued()
    assert started["submission_id"] == second["submission_id"] and started["created"]
    record = harness.store.get_submission(second["submission_id"])
    assert record is not None and record.labels["fabric.schedule"] == "minutely"
