"""The registry's record is durable: after the actor restarts, finished work still answers from SQLite."""

from __future__ import annotations

import time

import pytest
import ray

from fabric.errors import NotFoundError

from .test_engine import dag, py

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


def _restart_registry(client) -> None:
    """Kill the registry actor; Ray restarts it (max_restarts=-1). The SDK rides out the gap itself."""
    ray.kill(client._registry, no_restart=False)
    time.sleep(0.5)  # ray.kill is asynchronous: let the old actor go before the test asks the new one


def test_finished_work_survives_a_registry_restart_and_interrupted_work_says_so(client, fabric_home, tmp_path):
    done = client.submit(dag("kept", [py("a", "boom", params={"message": "kept error"}), py("b", "noop")],
                             edges=[("a", "b")]),
                         {"submission_id": "kept-001", "labels": {"team": "research"}})
    assert done.wait(60).state == "FAILED"
    running = client.submit(dag("cut", [py("long", "sleeper", params={"seconds": 60})]))
    deadline = time.monotonic() + 30
    while running.status().node("long").state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)

    _restart_registry(client)

    assert (fabric_home / "fabric.db").exists()
    status = done.status()  # rebuilt from the recorded events
    assert status.state == "FAILED"
    assert status.node("a").state == "FAILED" and status.node("a").attempts == 1
    assert "kept error" in status.node("a").error.message
    assert status.node("b").state == "SKIPPED"
    assert "about to fail" in done.logs("a")
    assert done.wait(1).state == "FAILED"
    with pytest.raises(NotFoundError):
        done.result("a")

    cut = running.status()
    assert cut.state == "FAILED" and "registry restarted" in cut.reason
    listed = {s["submission_id"]: s["state"] for s in client.list()}
    assert listed["kept-001"] == "FAILED" and listed[running.id] == "FAILED"
    again = client.submit(dag("kept", [py("a", "boom", params={"message": "kept error"}), py("b", "noop")],
                              edges=[("a", "b")]),
                          {"submission_id": "kept-001", "labels": {"team": "research"}})
    assert again.id == "kept-001" and not again.created  # idempotency survives the restart too
