"""The pipeline catalogue (fabric/actors/catalogue.py) on a real SQLite store: versions, runs by name with
params, max_active_runs with skip and cancel_older; the registry's submit is stood in by compile + record."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import pytest

from fabric.actors.catalogue import Catalogue
from fabric.errors import ErrorCode, FabricError, NotFoundError, SpecError
from fabric.plan import compile_plan
from fabric.record import SqliteStore, SubmissionRecord
from fabric.schedule.grants import TeamGrants, check_submission
from fabric.schedule.overlap import decide
from fabric.spec import load_spec, parse_runtime_params
from fabric.spec.catalogue import Overlap
from fabric.types import new_submission_id

pytestmark = pytest.mark.timeout(60)

SPEC: dict[str, Any] = {
    "version": 1, "pipeline_id": "factors",
    "params": {"as_of": {"type": "date", "default": "2024-01-31"}, "n": {"type": "int", "default": 5}},
    "nodes": [{"id": "make", "kind": "python_task", "entrypoint": "m:make", "outs": ["raw"],
               "params": {"n": "{{ params.n }}", "as_of": "{{ params.as_of }}"}},
              {"id": "clean", "kind": "sql", "ins": ["raw"],
               "params": {"query": "SELECT * FROM raw WHERE d <= '{{ params.as_of }}'"}}],
}


class Harness:
    """A Catalogue over a real store; `submit` validates and plans as the registry does, then records."""

    def __init__(self, path: Path) -> None:
        self.store = SqliteStore(path)
        self.cancelled: list[str] = []
        self.catalogue = Catalogue(self.store, self.submit, self.cancel)
        self._submit_lock = threading.Lock()  # as the registry's: lookup and record are one step

    def submit(self, spec: dict[str, Any], runtime_params: dict[str, Any] | None,
               grants: TeamGrants | None = None) -> dict[str, Any]:
        runtime = parse_runtime_params(runtime_params)
        if grants is not None:  # as the registry: a claim beyond the team's grants stores nothing
            check_submission(grants, runtime.team or "", load_spec(spec), runtime)
        plan = compile_plan(load_spec(spec), runtime)
        sid = runtime.submission_id or new_submission_id()
        with self._submit_lock:
            if self.store.get_submission(sid) is not None:
                return {"submission_id": sid, "created": False}
            dump = runtime.model_copy(update={"params": dict(plan.params)}).model_dump(mode="json",
                                                                                      exclude_none=True)
            self.store.add_submission(SubmissionRecord(sid, plan.pipeline_id, spec, dump, plan.plan_hash, "h",
                                                       float(len(self.store.list_submissions(limit=10_000))),
                                                       runtime.team, dict(runtime.labels)))
        return {"submission_id": sid, "created": True}

    def cancel(self, submission_id: str) -> None:
        self.cancelled.append(submission_id)
        self.store.set_state(submission_id, "CANCELLED")


@pytest.fixture
def harness(tmp_path: Path) -> Any:
    h = Harness(tmp_path / "fabric.db")
    yield h
    h.store.close()


def test_register_versions_and_list(harness: Harness) -> None:
    one = harness.catalogue.register(copy.deepcopy(SPEC), None, "quant")
    assert (one["pipeline_id"], one["version"], one["created"], one["overlap"]) == ("factors", 1, True, "skip")
    assert harness.catalogue.register(copy.deepcopy(SPEC), None, "quant")["created"] is False
    changed = copy.deepcopy(SPEC)
    changed["params"]["n"]["default"] = 6
    two = harness.catalogue.register(changed, {"max_active_runs": 2, "overlap": "cancel_older"}, "quant")
    assert (two["version"], two["max_active_runs"], two["overlap"]) == (2, 2, "cancel_older")
    assert [p["version"] for p in harness.catalogue.pipelines("quant")] == [2]
    versions = harness.catalogue.versions("factors", "quant")
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[0]["spec"]["edges"] == [{"from": "make", "to": "clean"}]  # registered normalized
    assert harness.catalogue.pipelines("other") == []
    with pytest.raises(NotFoundError):
        harness.catalogue.versions("factors", "other")  # another team's pipeline does not exist for it


@pytest.mark.parametrize(("spec_patch", "options", "where"), [
    ({"params": {"n": {"type": "int", "default": "five"}}}, None, "params.n"),
    ({}, {"overlap": "sometimes"}, "overlap"),
    ({}, {"max_active_runs": 0}, "max_active_runs"),
    ({}, {"max_runs": 1}, "max_runs"),
])
def test_bad_registrations_name_the_field(harness: Harness, spec_patch: dict[str, Any], options: Any,
                                          where: str) -> None:
    with pytest.raises(SpecError) as info:
        harness.catalogue.register({**copy.deepcopy(SPEC), **spec_patch}, options, None)
    assert any(p.where.startswith(where) for p in info.value.problems), info.value.problems
    assert harness.catalogue.pipelines(None) == []  # nothing half-written


def test_runs_by_name_with_params_and_versions(harness: Harness) -> None:
    harness.catalogue.register(copy.deepcopy(SPEC), None, "quant")
    reply = harness.catalogue.run("factors", None, {"params": {"as_of": "2024-02-29"}}, "quant")
    assert reply["created"] and not reply["skipped"] and reply["version"] == 1
    record = harness.store.get_submission(reply["submission_id"])
    assert record is not None and record.team == "quant"
    assert record.labels == {"fabric.pipeline": "factors", "fabric.pipeline_version": "1"}
    runs = harness.catalogue.runs("factors", 10, "quant")
    assert [(r["submission_id"], r["version"], r["params"]) for r in runs] == [
        (reply["submission_id"], 1, {"as_of": "2024-02-29", "n": 5})]
    # The same idempotency key again: the same run, even at the limit.
    again = harness.catalogue.run("factors", None, {"submission_id": reply["submission_id"],
                                                    "params": {"as_of": "2024-02-29"}}, "quant")
    assert (again["submission_id"], again["created"]) == (reply["submission_id"], False)
    with pytest.raises(SpecError) as info:
        harness.catalogue.run("factors", None, {"params": {"as_of": "2024-02-30", "ghost": 1}}, "quant")
    assert {(p.code, p.where) for p in info.value.problems} == {
        (ErrorCode.PARAM_TYPE, "runtime_params.params.as_of"), (ErrorCode.PARAM_UNKNOWN, "runtime_params.params.ghost")}
    with pytest.raises(NotFoundError) as missing:
        harness.catalogue.run("factors", 7, None, "quant")
    assert missing.value.where == "version"
    with pytest.raises(NotFoundError):
        harness.catalogue.run("factors", None, None, "other")
    # A run cannot be put in another team through runtime_params.
    other = harness.catalogue.run("factors", 1, {"team": "other"}, "quant")
    assert harness.store.get_submission(other["submission_id"]).team == "quant"  # type: ignore[union-attr]


def test_max_active_runs_skip(harness: Harness) -> None:
    harness.catalogue.register(copy.deepcopy(SPEC), {"max_active_runs": 1}, None)
    first = harness.catalogue.run("factors", None, None, None)
    skipped = harness.catalogue.run("factors", None, None, None)
    assert skipped["skipped"] and skipped["submission_id"] is None and first["submission_id"] in skipped["reason"]
    harness.store.set_state(first["submission_id"], "SUCCEEDED")
    assert harness.catalogue.run("factors", None, None, None)["created"]  # a slot freed


def test_max_active_runs_cancel_older_and_a_bad_start_cancels_nothing(harness: Harness) -> None:
    harness.catalogue.register(copy.deepcopy(SPEC), {"max_active_runs": 2, "overlap": "cancel_older"}, None)
    a = harness.catalogue.run("factors", None, None, None)["submission_id"]
    b = harness.catalogue.run("factors", None, None, None)["submission_id"]
    with pytest.raises(FabricError):
        harness.catalogue.run("factors", None, {"params": {"n": "x"}}, None)
    assert harness.cancelled == []
    c = harness.catalogue.run("factors", None, None, None)
    assert c["cancelled"] == [a] and harness.cancelled == [a] and c["created"]
    states = {r.submission_id: r.state for r in harness.store.list_submissions()}
    assert states == {a: "CANCELLED", b: "RUNNING", c["submission_id"]: "RUNNING"}


def test_racing_starts_take_the_last_slot_once(harness: Harness) -> None:
    harness.catalogue.register(copy.deepcopy(SPEC), {"max_active_runs": 1}, None)
    replies: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: replies.append(harness.catalogue.run("factors", None, None, None)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(r["created"] for r in replies) == 1 and sum(r["skipped"] for r in replies) == 5


def test_overlap_decision() -> None:
    active = [(3.0, "c"), (1.0, "a"), (2.0, "b")]
    assert decide(active, None, Overlap.SKIP).start
    assert decide(active, 4, Overlap.SKIP).start
    assert not decide(active, 3, Overlap.SKIP).start
    assert decide(active, 3, Overlap.CANCEL_OLDER).cancel == ("a",)
    assert decide(active, 1, Overlap.CANCEL_OLDER).cancel == ("a", "b", "c")


def test_cli_param_values_are_json_when_they_parse_else_text() -> None:
    from fabric.cli.pipelines import parse_param

    assert [parse_param(p) for p in ("n=5", "dry=true", 'u=["A","B"]', "as_of=2024-01-31", "s=a=b")] == [
        ("n", 5), ("dry", True), ("u", ["A", "B"]), ("as_of", "2024-01-31"), ("s", "a=b")]
    with pytest.raises(FabricError) as info:
        parse_param("novalue")
    assert info.value.where == "--param"


def test_a_run_by_name_is_held_to_the_teams_grants(harness):
    urgent = {**SPEC, "slo": {"priority": "critical"}}
    harness.catalogue.register(urgent, None, "trading")
    with pytest.raises(FabricError) as info:
        harness.catalogue.run(SPEC["pipeline_id"], None, None, "trading", TeamGrants())
    assert info.value.where == "slo.priority" and harness.store.list_submissions(limit=10) == []


# --- schedules (fabric/actors/schedules.py) with an injected clock -----------------------------------------

def _at(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def test_a_schedule_fires_each_tick_once_with_its_params_and_across_a_restart(harness: Harness,
                                                                              tmp_path: Path) -> None:
    from fabric.actors.schedules import Scheduler

    clock = [_at("2024-01-01T00:00:30")]
    scheduler = Scheduler(harness.store, harness.catalogue, lambda: clock[0])
    harness.catalogue.register(copy.deepcopy(SPEC), None, "quant")
    row = scheduler.put("factors", {"name": "minutely", "cron": "* * * * *", "params": {"n": 9},
                                    "catch_up": "all"}, "quant")
    assert row["next_fires"][:2] == [_at("2024-01-01T00:01:00"), _at("2024-01-01T00:02:00")]
    assert scheduler.fire_due() == []
    clock[0] = _at("2024-01-01T00:01:05")
    [fired] = scheduler.fire_due()
    assert fired["created"] and fired["submission_id"].endswith("20240101T000100Z")
    record = harness.store.get_submission(fired["submission_id"])
    assert record is not None and record.runtime_params["params"]["n"] == 9 and record.team == "quant"
    assert scheduler.fire_due() == []  # the same tick: never twice
    # A registry that fired a tick but died before recording it: the next one fires it again, same id.
    harness.store.close()
    store = SqliteStore(tmp_path / "fabric.db")
    harness.store = store
    catalogue = Catalogue(store, harness.submit, harness.cancel)
    clock[0] = _at("2024-01-01T00:02:10")
    fired_again = Scheduler(store, catalogue, lambda: clock[0])
    replies = fired_again._fire(_with_last(store.schedules("quant")[0], None), clock[0])
    assert [r["created"] for r in replies] == [False, True]  # 00:01 again: the run already there; 00:02 new
    assert len(store.list_submissions()) == 2


def _with_last(record: Any, last: float | None) -> Any:
    import dataclasses

    return dataclasses.replace(record, last_tick=last)


def test_catch_up_pause_resume_and_bad_schedules(harness: Harness) -> None:
    from fabric.actors.schedules import Scheduler

    clock = [_at("2024-01-01T00:00:00")]
    scheduler = Scheduler(harness.store, harness.catalogue, lambda: clock[0])
    harness.catalogue.register(copy.deepcopy(SPEC), None, None)
    scheduler.put("factors", {"name": "latest", "cron": "* * * * *", "catch_up": "latest"}, None)
    scheduler.put("factors", {"name": "all", "cron": "* * * * *", "catch_up": "all", "max_catch_up": 2}, None)
    clock[0] = _at("2024-01-01T00:03:30")  # three ticks passed while "down"
    fired = scheduler.fire_due()
    assert sorted((f["schedule"], f["tick"]) for f in fired) == [
        ("all", _at("2024-01-01T00:02:00")), ("all", _at("2024-01-01T00:03:00")),
        ("latest", _at("2024-01-01T00:03:00"))]
    paused = scheduler.set_paused("factors", "latest", True, None)
    assert paused["paused"] and paused["next_fires"] == []
    clock[0] = _at("2024-01-01T00:06:30")
    assert {f["schedule"] for f in scheduler.fire_due()} == {"all"}
    resumed = scheduler.set_paused("factors", "latest", False, None)
    assert resumed["last_tick"] == clock[0] and resumed["next_fires"][0] == _at("2024-01-01T00:07:00")
    assert [f["schedule"] for f in scheduler.fire_due()] == []  # ticks passed while paused are not fired
    for raw, where in (({"name": "x", "cron": "* * *"}, "cron"), ({"name": "x", "cron": "* * * * *",
                                                                   "params": {"n": "nine"}}, "params.n"),
                       ({"name": "x", "cron": "* * * * *", "params": {"ghost": 1}}, "params.ghost"),
                       ({"name": "x", "cron": "* * * * *", "start": "2024-02-01", "end": "2024-01-01"}, "end")):
        with pytest.raises(SpecError) as info:
            scheduler.put("factors", raw, None)
        assert [p.where for p in info.value.problems] == [where]
    with pytest.raises(NotFoundError):
        scheduler.put("ghost", {"name": "x", "cron": "* * * * *"}, None)
    with pytest.raises(NotFoundError):
        scheduler.set_paused("factors", "ghost", True, None)
    assert [s["name"] for s in scheduler.rows("factors", None)] == ["all", "latest"]


# --- which nodes a re-run reuses (fabric/execute/resume.py: reusable) ----------------------------------------

def test_a_rerun_reuses_succeeded_nodes_with_stored_outputs_and_everything_above_them(tmp_path: Path) -> None:
    from fabric.execute.outputs import MANIFEST, outputs_dir
    from fabric.execute.resume import REUSED, reusable
    from fabric.states import NodeState as S

    plan = compile_plan(load_spec({"version": 1, "pipeline_id": "p", "nodes": [
        {"id": "make", "kind": "python_task", "entrypoint": "m:f", "outs": ["raw"]},
        {"id": "side", "kind": "python_task", "entrypoint": "m:f", "outs": ["aux"]},
        {"id": "feat", "kind": "python_task", "entrypoint": "m:f", "ins": ["raw", "aux"], "outs": ["table"]},
        {"id": "fit", "kind": "python_task", "entrypoint": "m:f", "ins": ["table"], "outs": ["model"]},
        {"id": "report", "kind": "python_task", "entrypoint": "m:f", "ins": ["model"]}]}))
    root = str(tmp_path / "artifacts")

    def stored(sid: str, node: str) -> None:
        path = Path(outputs_dir(root, sid, node))
        path.mkdir(parents=True)
        (path / MANIFEST).write_bytes(b"x")

    for node in ("make", "feat"):
        stored("old", node)
    stored("older", "side")
    states = {"make": S.SUCCEEDED, "side": S.CACHED, "feat": S.SUCCEEDED, "fit": S.FAILED, "report": S.SKIPPED}
    reasons = {"side": REUSED.format(source="older")}
    assert reusable(plan, states, reasons, "old", root) == {"make": "old", "side": "older", "feat": "old"}
    assert reusable(plan, states, reasons, "old", root, "feat") == {"make": "old", "side": "older"}
    # A cache hit (not a re-use) runs again, and so does everything below it.
    assert reusable(plan, states, {"side": "cached: identical to x"}, "old", root) == {"make": "old"}
    # Outputs that are not stored: it runs again, and so does what reads them.
    assert reusable(plan, states, reasons, "elsewhere", root) == {"side": "older"}


def test_the_scheduler_loop_outlives_a_store_error_and_stops_when_told(harness: Harness) -> None:
    from fabric.actors.schedules import Scheduler

    calls: list[float] = []

    class Flaky(Scheduler):
        def fire_due(self, now: float | None = None) -> list[dict[str, Any]]:
            calls.append(1.0)
            if len(calls) == 1:
                raise FabricError("the store is away", code=ErrorCode.STORE_UNAVAILABLE)
            return []

    stop = threading.Event()
    loop = threading.Thread(target=Flaky(harness.store, harness.catalogue, lambda: 0.0).run_forever,
                            args=(stop, 0.01))
    loop.start()
    deadline = __import__("time").monotonic() + 10
    while len(calls) < 3 and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.01)
    stop.set()
    loop.join(5)
    assert len(calls) >= 3 and not loop.is_alive()


def test_a_tick_fires_on_the_teams_grants_of_now_from_the_tokens_file(harness: Harness, tmp_path: Path) -> None:
    """A schedule put while the team could claim high priority stops starting runs once an admin lowers it."""
    import yaml

    from fabric.actors.schedules import Scheduler, tokens_file_grants

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [], "grants": {"quant": {"max_priority": "high"}}}))
    urgent = {**copy.deepcopy(SPEC), "slo": {"priority": "high"}}
    clock = [_at("2024-01-01T00:00:30")]
    grants_of = tokens_file_grants(str(tokens))
    scheduler = Scheduler(harness.store, harness.catalogue, lambda: clock[0], grants_of)
    harness.catalogue.register(urgent, None, "quant", grants_of("quant"))
    scheduler.put("factors", {"name": "m", "cron": "* * * * *"}, "quant", grants_of("quant"))
    clock[0] = _at("2024-01-01T00:01:05")
    [fired] = scheduler.fire_due()
    assert fired["created"]  # granted now: the tick's run starts
    tokens.write_text(yaml.safe_dump({"tokens": [], "grants": {"quant": {"max_priority": "normal"}}}))
    clock[0] = _at("2024-01-01T00:02:05")
    [refused] = scheduler.fire_due()
    assert refused["submission_id"] is None and "max_priority is 'normal'" in refused["error"]
    assert len(harness.store.list_submissions()) == 1  # nothing stored for the refused tick
    assert scheduler.fire_due() == []  # the tick is passed, not retried for ever
    assert tokens_file_grants(str(tmp_path / "absent.yaml"))("quant") is None  # no gateway: no tokens file
