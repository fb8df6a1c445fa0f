"""Lineage built in a child process of the registry (fabric/actors/lineage_proc.py): a real child writes the
lineage file; a killed child is started again and the batches it had not confirmed are sent again, so lineage
may come twice but never goes missing."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from fabric.actors.lineage_proc import LineageProcess
from fabric.actors.observe import ObservedStore, Observer
from fabric.record import Event, MemoryStore, SubmissionRecord
from fabric.settings import Settings

pytestmark = pytest.mark.timeout(60)

SPEC = {"version": 1, "pipeline_id": "pipe", "nodes": [
    {"id": "a", "kind": "python_task", "entrypoint": "m:a", "outs": ["x"]},
    {"id": "b", "kind": "python_task", "entrypoint": "m:b", "ins": ["x"]}]}


def run_events(sid: str) -> list[Event]:
    return [Event(sid, "a", "QUEUED", "RUNNING", 1.0), Event(sid, "a", "RUNNING", "SUCCEEDED", 2.0),
            Event(sid, "b", "QUEUED", "RUNNING", 2.0), Event(sid, "b", "RUNNING", "SUCCEEDED", 3.0),
            Event(sid, None, "RUNNING", "SUCCEEDED", 3.0)]


def lineage_lines(path: Path) -> list[tuple[str, str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [(r["run"]["facets"].get("parent", {}).get("run", {}).get("runId", ""), r["job"]["name"], r["eventType"])
            for r in rows]


def test_a_child_process_builds_and_writes_the_lineage_and_a_killed_child_loses_none(tmp_path: Path) -> None:
    lineage_file = tmp_path / "lineage.jsonl"
    settings = Settings.from_env({"FABRIC_LINEAGE": "file", "FABRIC_LINEAGE_FILE": str(lineage_file)},
                                 home=str(tmp_path))
    inner = MemoryStore()
    for sid in ("s1", "s2"):
        inner.add_submission(SubmissionRecord(sid, "pipe", SPEC, {}, "plan", "req", 0.0, team="t"))
    process = LineageProcess(settings)
    observer = Observer(inner, None, process=process)
    store = ObservedStore(inner, observer)
    try:
        store.append_events(run_events("s1"))
        assert observer.drain(30)
        first = lineage_lines(lineage_file)
        assert [(job, kind) for _, job, kind in first] == [
            ("pipe", "START"), ("pipe.a", "START"), ("pipe.a", "COMPLETE"), ("pipe.b", "START"),
            ("pipe.b", "COMPLETE"), ("pipe", "COMPLETE")]

        child = process._child
        assert child is not None
        child.send_signal(signal.SIGSTOP)  # it takes s2's batch into its pipe, and never confirms it
        store.append_events(run_events("s2"))
        assert not observer.drain(1.0)
        child.kill()  # as an OOM kill would: the batch it held is sent again to a new child
        assert observer.drain(30)
        deadline = time.monotonic() + 20
        while len(lineage_lines(lineage_file)) < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.restarts == 1
        second = [(job, kind) for _, job, kind in lineage_lines(lineage_file)[len(first):]]
        assert second == [(job, kind) for _, job, kind in first]  # s2's lineage whole, built by the new child
    finally:
        process.close()


def test_a_child_that_dies_mid_run_hands_the_run_on_without_a_second_start_or_a_lost_end(tmp_path: Path) -> None:
    """The old child saw the run start and node a start; the new one gets the rest, marked resumed: a's
    COMPLETE is not lost (it carries a's attempt), and the run does not START twice."""
    from fabric.record.lineage import run_id

    lineage_file = tmp_path / "lineage.jsonl"
    settings = Settings.from_env({"FABRIC_LINEAGE": "file", "FABRIC_LINEAGE_FILE": str(lineage_file)},
                                 home=str(tmp_path))
    inner = MemoryStore()
    inner.add_submission(SubmissionRecord("s3", "pipe", SPEC, {}, "plan", "req", 0.0, team="t"))
    process = LineageProcess(settings)
    observer = Observer(inner, None, process=process)
    store = ObservedStore(inner, observer)
    events = run_events("s3")
    events[0] = Event("s3", "a", "QUEUED", "RUNNING", 1.0, 1)
    events[1] = Event("s3", "a", "RUNNING", "SUCCEEDED", 2.0, 1)
    try:
        store.append_events(events[:1])
        assert observer.drain(30)
        child = process._child
        assert child is not None
        child.kill()
        child.wait(10)
        deadline = time.monotonic() + 20
        while process._child is child and time.monotonic() < deadline:
            time.sleep(0.05)
        store.append_events(events[1:])
        assert observer.drain(30)
        rows = [json.loads(line) for line in lineage_file.read_text().splitlines()]
        kinds = [(r["job"]["name"], r["eventType"]) for r in rows]
        assert kinds == [("pipe", "START"), ("pipe.a", "START"), ("pipe.a", "COMPLETE"), ("pipe.b", "START"),
                         ("pipe.b", "COMPLETE"), ("pipe", "COMPLETE")]
        a_runs = {r["run"]["runId"] for r in rows if r["job"]["name"] == "pipe.a"}
        assert a_runs == {run_id("s3", "a", 1)}  # START and COMPLETE of one attempt, across two children
    finally:
        process.close()
