"""A stuck quota actor costs other teams nothing: with research's quota actor suspended (SIGSTOP), trading's
status answers keep coming and its work runs, while research's new work is held with the reason shown and
runs once the actor answers again. Admission as shipped (on by default), no scheduling file: the default config."""

from __future__ import annotations

import os
import signal
import statistics
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def client(fabric_home):
    import ray

    import fabric as fb
    from tests.conftest import REPO

    os.chdir(REPO)  # workers import `tests.nodes` from the driver's working directory
    yield fb.connect("local", num_cpus=2, num_gpus=4, home=str(fabric_home))
    ray.shutdown()


def dag(name: str, seconds: float, gpu: float = 1.0) -> dict:
    return {"version": 1, "pipeline_id": name, "nodes": [
        {"id": "work", "kind": "python_task", "entrypoint": "tests.nodes:sleeper", "params": {"seconds": seconds},
         "resources": {"cpu": "100m", "gpu": gpu}}]}


def status_times(submission, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        submission.status()
        times.append(time.perf_counter() - started)
    return times


def quota_actor_pid() -> int:
    """The one quota actor's worker process in this test's Ray (actors are sealed: it cannot be asked; its title
    names it, and its parent is this Ray's raylet)."""
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                title = cmdline.read()
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if title.startswith(b"ray::QuotaFace") and parent == raylet:
            found.append(int(entry))
    assert len(found) == 1, found
    return found[0]


def p99(times: list[float]) -> float:
    return statistics.quantiles(times, n=100)[-1]


def test_a_suspended_quota_actor_holds_its_team_only(client):
    from fabric.execute.quotas import QUOTA_CALL_TIMEOUT_S

    research, trading = client.for_team("research"), client.for_team("trading")
    # Each team's first GPU work makes its quota actor (the default team budget applies to both).
    assert research.submit(dag("warm-r", 0.1)).wait(60).state == "SUCCEEDED"
    pid = quota_actor_pid()
    assert trading.submit(dag("warm-t", 0.1)).wait(60).state == "SUCCEEDED"
    watched = trading.submit(dag("watched", 40, gpu=0.5))
    baseline = status_times(watched, 60)

    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        first = research.submit(dag("r-during", 0.2))  # the mirror admits it; its booking goes unanswered
        during = status_times(watched, 60)
        other = trading.submit(dag("t-during", 0.2))
        assert other.wait(60).state == "SUCCEEDED", "another team's work was held by research's quota actor"
        time.sleep(max(stopped_at + QUOTA_CALL_TIMEOUT_S + 2 - time.monotonic(), 0))  # research is held now
        deadline = time.monotonic() + 20
        held = research.submit(dag("r-held", 0.2))
        while "did not answer" not in (held.status().node("work").reason or ""):
            assert time.monotonic() < deadline, held.status().node("work")
            time.sleep(0.2)
        during += status_times(watched, 60)
        assert held.status().node("work").state == "QUEUED"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert held.wait(60).state == "SUCCEEDED", "research's work did not run once its actor answered again"
    assert first.wait(60).state == "SUCCEEDED"
    watched.cancel()
    print(f"trading status with research's quota actor suspended: baseline p50 {statistics.median(baseline) * 1000:.1f}"
          f" ms p99 {p99(baseline) * 1000:.1f} ms; suspended p50 {statistics.median(during) * 1000:.1f} ms "
          f"p99 {p99(during) * 1000:.1f} ms ({len(during)} calls)")
    # Every answer came, and none waited out a quota call's time-out (the engine never awaits a quota actor).
    assert len(during) == 120 and max(during) < QUOTA_CALL_TIMEOUT_S
