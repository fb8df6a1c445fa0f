"""Admission on a real local Ray with 12 fake GPUs, as fabric ships it: admission is on by default and the test
writes no scheduling config, so the shipped default one applies.
Priorities, backfill around a reservation, the default team budget (8 GPUs), the wait reason in status,
preemption after the default `preempt_after_s`, and the CPU fallback of GPU-first work."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

GPUS = 12
PREEMPT_AFTER_S = 30  # the default config's preempt_after_s


@pytest.fixture(scope="module")
def client(fabric_home):
    import os

    import ray

    import fabric as fb
    from tests.conftest import REPO

    os.chdir(REPO)  # workers import `tests.nodes` from the driver's working directory
    yield fb.connect("local", num_cpus=2, num_gpus=GPUS, home=str(fabric_home))
    ray.shutdown()


def gpu_dag(name: str, gpu: float, seconds: float, priority: str = "normal", max_runtime: str | None = None) -> dict:
    node = {"id": "work", "kind": "python_task", "entrypoint": "tests.nodes:sleeper", "params": {"seconds": seconds},
            "resources": {"cpu": "100m", "gpu": gpu}}
    if max_runtime:
        node["slo"] = {"max_runtime": max_runtime}
    return {"version": 1, "pipeline_id": name, "slo": {"priority": priority}, "nodes": [node]}


def started(submission) -> float:
    return submission.wait(60).node("work").started_at


def wait_running(submission, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while submission.status().node("work").state != "RUNNING":
        assert time.monotonic() < deadline, submission.status().node("work")
        time.sleep(0.1)


def test_higher_priority_goes_first_when_capacity_frees(client):
    hog = client.submit(gpu_dag("hog", GPUS, 3))
    wait_running(hog)
    low = client.submit(gpu_dag("low", GPUS, 0.5, "low"))
    time.sleep(0.3)
    high = client.submit(gpu_dag("high", GPUS, 0.5, "high"))
    time.sleep(0.5)
    waiting = low.status().node("work")
    assert waiting.state == "QUEUED" and waiting.reason.startswith("queue #2: no capacity")
    assert started(high) < started(low), "high priority must start before low, though it came later"
    assert hog.wait(30).state == "SUCCEEDED"


def test_a_small_node_backfills_around_a_reserved_big_one_without_delaying_it(client):
    hog = client.submit(gpu_dag("hog", 2, 3, max_runtime="8s"))
    wait_running(hog)
    big = client.submit(gpu_dag("big", GPUS, 0.5))
    time.sleep(0.5)
    assert "reserved to start by" in big.status().node("work").reason
    short = client.submit(gpu_dag("short", 0.25, 0.2, max_runtime="4s"))
    long = client.submit(gpu_dag("long", 0.25, 8, max_runtime="20s"))
    assert short.wait(30).state == "SUCCEEDED"  # fits now and ends before the reservation: it backfills
    assert started(short) < started(big)
    assert "would delay" in long.status().node("work").reason or started(long) >= started(big)
    assert big.wait(30).state == "SUCCEEDED"
    long.cancel()


def test_a_team_over_its_gpu_budget_waits_with_the_reason(client):
    research = client.for_team("research")
    first = research.submit(gpu_dag("first", 8, 4))  # the default team budget: 8 GPUs at once
    wait_running(first)
    second = research.submit(gpu_dag("second", 1, 0.2))
    time.sleep(0.5)
    node = second.status().node("work")
    assert node.state == "QUEUED" and node.reason.endswith("quota: team research gpu 8/8 in use"), node
    view = research.queues()  # what GET /api/orch/queues and /quotas show the team
    assert view["admission"] and [(i["submission_id"], i["node_id"]) for i in view["queue"]] == [(second.id, "work")]
    assert view["queue"][0]["reason"] == "quota: team research gpu 8/8 in use"
    assert [(q["team"], q["gpu_in_use"], q["gpu_budget"]) for q in view["quotas"]] == [("research", 8.0, 8)]
    assert client.for_team("trading").queues()["queue"] == []  # another team does not see research's nodes
    other = client.for_team("trading").submit(gpu_dag("other", 1, 0.2))  # another team is not held
    assert other.wait(30).state == "SUCCEEDED"
    assert started(second) >= first.wait(30).node("work").ended_at - 0.5


@pytest.mark.timeout(240)
def test_critical_work_preempts_low_spot_work_which_checkpoints_and_runs_again(client, tmp_path):
    victim_spec = {"version": 1, "pipeline_id": "spot", "slo": {"priority": "low", "qos": "spot_ok",
                                                                 "retry": {"max_attempts": 1}},
                   "nodes": [{"id": "work", "kind": "python_task", "entrypoint": "tests.nodes:checkpointing_sleeper",
                              "params": {"seconds": PREEMPT_AFTER_S + 10, "marker_dir": str(tmp_path)},
                              "resources": {"cpu": "100m", "gpu": GPUS}}]}
    victim = client.submit(victim_spec)
    wait_running(victim)
    urgent = client.submit(gpu_dag("urgent", GPUS, 0.3, "critical"))
    status = urgent.wait(PREEMPT_AFTER_S + 30)  # it waits the default preempt_after_s, then preempts
    assert status.state == "SUCCEEDED"
    assert (tmp_path / "checkpoint.1").exists(), "on_preempt ran before the attempt stopped"
    done = victim.wait(PREEMPT_AFTER_S + 60)
    node = done.node("work")
    assert done.state == "SUCCEEDED" and node.attempts == 2  # max_attempts 1: a preemption is not a failure
    assert node.history[0].outcome == "QUEUED" and node.history[0].ended_at <= status.node("work").started_at + 1
    from tests.reliability.results import record

    record("fault", "preempt low-priority spot work", urgent_started_after_s=round(
        status.node("work").started_at - status.created_at, 2), victim_attempts=node.attempts,
        outcome="checkpointed through on_preempt, requeued (not charged), SUCCEEDED")


def test_gpu_first_work_runs_on_cpu_once_no_gpu_freed_up_within_its_wait(client):
    hog = client.submit(gpu_dag("hog", GPUS, 4))
    wait_running(hog)
    node = {"id": "work", "kind": "python_task", "entrypoint": "tests.nodes:which_device",
            "resources": {"cpu": "100m", "gpu": 1, "fallback": {"cpu": "200m", "after": "1s"}}}
    patient = client.submit({"version": 1, "pipeline_id": "gpu-first", "nodes": [node]})
    time.sleep(0.3)
    assert "(CPU fallback at" in patient.status().node("work").reason
    done = patient.wait(30)
    assert done.state == "SUCCEEDED" and patient.result("work") == "cpu", done.node("work")
    assert done.node("work").started_at < hog.wait(30).node("work").ended_at, "it waited for the GPUs after all"
    lucky = client.submit({"version": 1, "pipeline_id": "gpu-free", "nodes": [node]})  # the GPUs are free now
    assert lucky.wait(30).state == "SUCCEEDED" and lucky.result("work") == "gpu"
