"""Recovery: the registry actor dies mid-DAG and comes back; the DAG finishes, succeeded nodes do not rerun."""

from __future__ import annotations

import time

import pytest
import ray

from fabric.errors import NotFoundError
from tests.ray.test_engine import dag, py

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


def _restart_registry(client) -> None:
    """Kill the registry actor; Ray restarts it (max_restarts=-1). The SDK rides out the gap itself."""
    ray.kill(client._registry, no_restart=False)
    time.sleep(0.5)  # ray.kill is asynchronous: let the old actor go before the test asks the new one


def three_step(marker_dir: str) -> dict:
    return dag("resume", [
        py("a", "counted", params={"marker_dir": marker_dir, "name": "a"}, outs=["a"]),
        py("b", "counted", params={"marker_dir": marker_dir, "name": "b", "seconds": 4}, ins=["x=a"], outs=["b"]),
        py("c", "counted", params={"marker_dir": marker_dir, "name": "c"}, ins=["x=a", "y=b"]),
    ], edges=[("a", "b"), ("b", "c")])


def runs(marker_dir, name: str) -> int:
    return len(list(marker_dir.glob(f"{name}.*")))


def test_a_dag_survives_the_registry_dying_mid_run(client, tmp_path):
    submission = client.submit(three_step(str(tmp_path)))
    deadline = time.monotonic() + 30
    while submission.status().node("b").state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert submission.status().node("a").state == "SUCCEEDED"

    fault_at = time.time()
    _restart_registry(client)
    during = submission.status()  # answered by the restarted registry, from the record
    answered_s = time.time() - fault_at
    assert during.state == "RUNNING" and during.node("a").state == "SUCCEEDED"

    status = submission.wait(60)
    assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
    assert runs(tmp_path, "a") == 1, "a SUCCEEDED before the restart and must not run again"
    assert runs(tmp_path, "c") == 1
    assert status.node("b").attempts >= 2  # the interrupted attempt, then a new one
    assert submission.result("c") == "c(a(),b(a()))"  # c read a's output back from the artifact store
    from tests.reliability.results import record

    record("fault", "registry actor killed (Ray restarts it)", answered_again_s=round(answered_s, 2),
           recovered_s=round(status.ended_at - fault_at, 2), reruns_of_succeeded_nodes=0,
           outcome="resumed from the store; SUCCEEDED")


def test_finished_work_answers_from_the_record_after_a_restart(client, fabric_home):
    done = client.submit(dag("kept", [py("a", "boom", params={"message": "kept error"}), py("b", "noop")],
                             edges=[("a", "b")]),
                         {"submission_id": "kept-001", "labels": {"team": "research"}})
    assert done.wait(60).state == "FAILED"

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
    assert {s["submission_id"]: s["state"] for s in client.list()}["kept-001"] == "FAILED"
    again = client.submit(dag("kept", [py("a", "boom", params={"message": "kept error"}), py("b", "noop")],
                              edges=[("a", "b")]),
                          {"submission_id": "kept-001", "labels": {"team": "research"}})
    assert again.id == "kept-001" and not again.created  # idempotency survives the restart too


def test_a_rerun_across_registry_restarts_recomputes_nothing_it_reused(client, tmp_path):
    """A run fails at fit; the registry restarts; the re-run from fit reuses make_data and features exactly as it
    would have before; the registry restarts again while the re-run's report runs, and still nothing reused (nor
    fit, which had succeeded) is computed again: the execution counters prove it."""
    marks = str(tmp_path)
    failing = dag("rerun_restart", [
        py("make_data", "counted", params={"marker_dir": marks, "name": "make_data"}, outs=["raw"]),
        py("features", "counted", params={"marker_dir": marks, "name": "features"}, ins=["x=raw"], outs=["t"]),
        py("fit", "fails_first", params={"marker_dir": marks, "name": "fit"}, ins=["x=t"], outs=["m"]),
        py("report", "counted", params={"marker_dir": marks, "name": "report", "seconds": 4}, ins=["x=m"]),
    ], edges=[("make_data", "features"), ("features", "fit"), ("fit", "report")])
    first = client.submit(failing)
    assert first.wait(60).state == "FAILED"
    _restart_registry(client)
    from fabric.types import new_submission_id

    reply = client.rerun_reply(first.id, "fit", new_submission_id())
    assert (reply["reused"], reply["rerun"]) == (["features", "make_data"], ["fit", "report"])
    again = client.get(reply["submission_id"])
    deadline = time.monotonic() + 30
    while again.status().node("report").state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert again.status().node("fit").state == "SUCCEEDED"
    _restart_registry(client)  # while report runs
    status = again.wait(60)
    assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.reason) for n in status.nodes]
    assert status.node("features").state == "CACHED" and first.id in status.node("features").reason
    assert [runs(tmp_path, n) for n in ("make_data", "features", "fit")] == [1, 1, 2]  # fit: failed, then ok
    assert runs(tmp_path, "report") == 2  # interrupted, then run again


def test_the_kill_switch_survives_a_restart_and_is_audited(client):
    from fabric.errors import ErrorCode, FabricError

    assert client.kill_switch(True, "upgrade", actor="ops") == {"on": True, "reason": "upgrade (by ops)"}
    _restart_registry(client)
    assert client.kill_switch()["on"] is True
    with pytest.raises(FabricError) as caught:
        client.submit(dag("closed", [py("a", "value")]))
    assert caught.value.code == ErrorCode.ADMISSION_CLOSED
    assert client.kill_switch(False, actor="ops")["on"] is False
    assert client.submit(dag("open", [py("a", "value")])).wait(30).state == "SUCCEEDED"


def test_retention_removes_expired_submissions_but_keeps_their_audit(client, fabric_home):
    keep = client.submit(dag("keep", [py("a", "value", outs=["a"]), py("b", "add", params={"b": 1.0}, ins=["a"])],
                             edges=[("a", "b")]), {"ttl_days": 30})
    expire = client.submit(dag("expire", [py("a", "value", outs=["a"]), py("b", "add", params={"b": 1.0},
                                                                          ins=["a"])], edges=[("a", "b")]),
                           {"ttl_days": 1})
    assert keep.wait(30).state == expire.wait(30).state == "SUCCEEDED"
    assert (fabric_home / "artifacts" / expire.id / "a" / "outputs" / "outputs.pkl").exists()

    report = ray.get(client._registry.sweep.remote(client._cap, time.time() + 2 * 86_400))  # two days on
    [removed] = report["removed"]
    assert removed["submission_id"] == expire.id and removed["files"] >= 1 and removed["submissions"] == 1
    assert not (fabric_home / "artifacts" / expire.id).exists()
    with pytest.raises(NotFoundError):
        expire.status()
    assert keep.status().state == "SUCCEEDED"
    from fabric.record import SqliteStore

    with SqliteStore(fabric_home / "fabric.db", read_only=True) as store:
        audit = store.events(expire.id)
    assert audit[-1].target == "EXPIRED" and "ttl_days=1" in audit[-1].reason
    assert len(audit) > 3  # the run's own events are still there


def second_registry_is_refused(client, where: str) -> None:
    """A second registry on the same store (another actor name, same FABRIC_HOME and FABRIC_STORE) stops with
    STORE_LEASED naming the running registry; the running one is untouched."""
    from fabric.actors import HEAD_RESOURCE
    from fabric.actors.control import RegistryActor
    from fabric.actors.registry import NAMESPACE
    from fabric.client import _call
    from fabric.errors import ErrorCode, FabricError

    holder_pid = ray.get(client._registry.pid.remote())
    second = RegistryActor.options(name="fabric-registry-second", namespace=NAMESPACE, num_cpus=0, max_restarts=-1,
                                   resources={HEAD_RESOURCE: 0.001}).remote(ray.get(client._registry.home_dir.remote()))
    started = time.monotonic()
    with pytest.raises(FabricError) as caught:
        _call(second.ping, timeout=60)
    assert caught.value.code == ErrorCode.STORE_LEASED and caught.value.where == where
    assert f"pid {holder_pid}" in caught.value.message and f"pid {holder_pid}" in caught.value.fix
    assert time.monotonic() - started < 40  # it waited out LEASE_WAIT_S once, then said so: no restart loop
    assert client.ping()


def test_a_second_registry_on_the_same_home_refuses_naming_the_first(client, fabric_home):
    second_registry_is_refused(client, str(fabric_home / "fabric.db"))


def test_a_map_resumes_without_running_its_succeeded_children_again(client, tmp_path):
    spec = dag("map_resume", [
        py("xs", "int_list", params={"n": 6}, outs=["xs"]),
        py("m", "item_step", params={"marker_dir": str(tmp_path)}, ins=["item=xs"], outs=["ys"],
           map={"over": "item"}),
    ], edges=[("xs", "m")])
    submission = client.submit(spec)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = {n.node_id for n in submission.status().nodes if n.state == "SUCCEEDED"}
        if {"m[0]", "m[1]", "m[2]"} <= done:
            break
        time.sleep(0.1)
    assert "m[5]" not in done  # the slow children were still running
    _restart_registry(client)
    status = submission.wait(60)
    assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
    assert [runs(tmp_path, f"item{i}") for i in range(3)] == [1, 1, 1], "SUCCEEDED children ran again"
    assert all(runs(tmp_path, f"item{i}") >= 1 for i in range(3, 6))
    assert submission.result("m", "ys") == [0, 10, 20, 30, 40, 50]  # the gather read the first three back


def test_a_finished_maps_children_keep_their_attempts_and_logs_after_a_restart(client, tmp_path):
    """A registry that did not run the submission answers from the record: `m[i]` is no node of the spec,
    but its status and its log (each attempt) are still there."""
    spec = dag("map_logs", [
        py("xs", "int_list", params={"n": 3}, outs=["xs"]),
        py("m", "item_said", params={"marker_dir": str(tmp_path), "fail_once": 1}, ins=["item=xs"], outs=["ys"],
           map={"over": "item"}, slo={"retry": {"max_attempts": 2, "backoff_sec": 0.1}}),
    ], edges=[("xs", "m")])
    submission = client.submit(spec)
    assert submission.wait(60).state == "SUCCEEDED"
    _restart_registry(client)
    status = submission.status()
    assert [(n.node_id, n.state, n.attempts) for n in status.nodes if n.node_id.startswith("m[")] == [
        ("m[0]", "SUCCEEDED", 1), ("m[1]", "SUCCEEDED", 2), ("m[2]", "SUCCEEDED", 1)]
    log = submission.logs("m[1]")
    assert log.count("--- attempt") == 2 and "item 1 execution 2" in log and "item 0" not in log, log
    with pytest.raises(NotFoundError):
        submission.logs("m[x]")
    with pytest.raises(NotFoundError):
        submission.logs("xs[0]")  # not a map node: it has no children
