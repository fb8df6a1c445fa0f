"""Issue 17's done-when on a fake clock, over a real SQLite store and the registry's own Catalogue, Scheduler and
Backfills (the runs are recorded, not executed: tests/ray/test_pipelines.py and test_backfill.py run real ones).

- The quant example, registered with its `as_of` and `n_assets` params, on an every-minute schedule: exactly one run
  per tick across a registry restart (a new registry on the same store re-fires a tick it had not recorded) and a
  second firer racing it (what a second gateway replica would be if replicas fired: they do not);
- the ticks missed during a 3-minute stop, caught up per policy (none, latest, all);
- a 30-date backfill, 4 at a time, with its progress after every pass."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from fabric.actors.backfills import Backfills
from fabric.actors.catalogue import Catalogue
from fabric.actors.schedules import Scheduler
from fabric.record import SqliteStore
from tests.conftest import REPO
from tests.unit.test_catalogue import Harness

pytestmark = pytest.mark.timeout(120)

QUANT = yaml.safe_load((REPO / "jobs/dags/quant_backtest.yaml").read_text())
PIPELINE = QUANT["pipeline_id"]


def _at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def _stamps(store: SqliteStore) -> list[str]:
    return sorted(r.submission_id.rsplit("-", 1)[1] for r in store.list_submissions(limit=10_000))


@pytest.fixture
def quant(tmp_path: Path) -> Any:
    bench = Harness(tmp_path / "fabric.db")
    made = bench.catalogue.register(dict(QUANT), None, "quant")
    assert made["version"] == 1 and set(QUANT["params"]) == {"as_of", "n_assets"}
    yield bench
    bench.store.close()


def test_every_minute_exactly_once_per_tick_across_a_restart_and_a_racing_firer(quant: Harness,
                                                                                 tmp_path: Path) -> None:
    clock = [_at("2024-03-01T09:00:30")]
    scheduler = Scheduler(quant.store, quant.catalogue, lambda: clock[0])
    scheduler.put(PIPELINE, {"name": "minutely", "cron": "* * * * *", "catch_up": "all",
                             "params": {"n_assets": 10}}, "quant")
    for minute in range(1, 4):
        clock[0] = _at(f"2024-03-01T09:0{minute}:02")
        assert len(scheduler.fire_due()) == 1
    # A registry dies after starting 09:04's run but before recording the tick: the restarted one (a new
    # Catalogue and Scheduler over the same store) fires 09:04 again and gets the run already there.
    clock[0] = _at("2024-03-01T09:04:02")
    before = quant.store.schedules("quant")[0]  # as the store had it: last tick 09:03
    assert before.last_tick == _at("2024-03-01T09:03:00")
    [fired] = scheduler.fire_due()
    restarted = Scheduler(quant.store, Catalogue(quant.store, quant.submit, quant.cancel), lambda: clock[0])
    [again] = restarted._fire(before, clock[0])  # the tick's mark was lost with the registry: fired again
    assert fired["created"] is True
    assert again["created"] is False and again["submission_id"].endswith("20240301T090400Z")
    # Two firers at once over the same due tick (one store has one registry, by its lease: they share its
    # submit path, and the tick's submission id makes one run).
    clock[0] = _at("2024-03-01T09:05:01")
    racer = Scheduler(quant.store, Catalogue(quant.store, quant.submit, quant.cancel), lambda: clock[0])
    replies: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda s=s: replies.extend(s.fire_due())) for s in (restarted, racer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(1 for r in replies if r.get("created")) == 1
    assert _stamps(quant.store) == [f"20240301T090{m}00Z" for m in range(1, 6)]  # one run per tick, none missed
    runs = quant.catalogue.runs(PIPELINE, 100, "quant")
    assert {r["params"]["n_assets"] for r in runs} == {10} and {r["params"]["as_of"] for r in runs} == {"2021-11-16"}


@pytest.mark.parametrize(("policy", "expected"), [
    ("none", ["20240301T091300Z"]),  # only a tick at most 2 minutes late: 09:11 and 09:12 are passed
    ("latest", ["20240301T091300Z"]),
    ("all", ["20240301T091100Z", "20240301T091200Z", "20240301T091300Z"]),
])
def test_ticks_missed_during_a_3_minute_stop_are_caught_up_per_policy(quant: Harness, policy: str,
                                                                     expected: list[str]) -> None:
    clock = [_at("2024-03-01T09:09:30")]
    scheduler = Scheduler(quant.store, quant.catalogue, lambda: clock[0])
    scheduler.put(PIPELINE, {"name": "minutely", "cron": "* * * * *", "catch_up": policy}, "quant")
    clock[0] = _at("2024-03-01T09:10:01")
    assert len(scheduler.fire_due()) == 1  # 09:10, on time
    # The cluster is down from 09:10:30 to 09:13:45: ticks 09:11, 09:12 and 09:13 were missed.
    clock[0] = _at("2024-03-01T09:13:45")
    restarted = Scheduler(quant.store, Catalogue(quant.store, quant.submit, quant.cancel), lambda: clock[0])
    fired = restarted.fire_due()
    assert sorted(r["submission_id"].rsplit("-", 1)[1] for r in fired) == expected
    clock[0] = _at("2024-03-01T09:14:01")
    assert [r["submission_id"].rsplit("-", 1)[1] for r in restarted.fire_due()] == ["20240301T091400Z"]


def test_a_30_date_backfill_runs_4_at_a_time_and_shows_progress(quant: Harness) -> None:
    backfills = Backfills(quant.store, quant.catalogue, quant.cancel, lambda: 1000.0)
    made = backfills.create(PIPELINE, {"start": "2024-01-01", "end": "2024-02-09", "step": "1b", "max_active": 4,
                                       "params": {"n_assets": 10}, "backfill_id": "bf-30"}, "quant")
    assert made["total"] == 30 and made["counts"]["RUNNING"] == 4 and made["counts"]["PENDING"] == 26
    seen: list[dict[str, int]] = []
    for _ in range(40):
        view = backfills.get("bf-30", "quant")
        seen.append(view["counts"])
        if view["state"] != "RUNNING":
            break
        running = sorted(r["submission_id"] for r in view["runs"] if r["state"] == "RUNNING")
        assert len(running) <= 4
        for sid in running[:3]:  # three end per pass, so the backfill refills the slots each time
            quant.store.set_state(sid, "SUCCEEDED")
        backfills.pump()
    assert view["state"] == "SUCCEEDED" and view["counts"]["SUCCEEDED"] == 30
    assert max(c["RUNNING"] for c in seen) == 4
    assert all(sum(c.values()) == 30 for c in seen)
    done = [c["SUCCEEDED"] for c in seen]
    assert done == sorted(done) and done[0] == 0  # progress only goes forward
    dates = [r["date"] for r in view["runs"]]
    assert dates[0] == "2024-01-01" and dates[-1] == "2024-02-09" and len(set(dates)) == 30
    record = quant.store.get_submission("bf-30-20240209")
    assert record is not None and record.runtime_params["params"] == {"as_of": "2024-02-09", "n_assets": 10}
