"""`ray job submit -- python -m jobs.run_dag DAG` against a real `ray start --head` with Ray's token auth on."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ray_head_process

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


def ray_job_submit(dashboard_port: int, env: dict[str, str], *entrypoint: str) -> subprocess.CompletedProcess:
    ray_bin = str(Path(sys.executable).with_name("ray"))
    deadline = time.monotonic() + 60
    while True:
        done = subprocess.run(
            [ray_bin, "job", "submit", f"--address=http://127.0.0.1:{dashboard_port}", "--working-dir", ".",
             "--", *entrypoint], cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
        # The dashboard answers before its job agent has registered (slow on a busy machine): Ray asks to retry.
        if "No available agent to submit job" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(2)


def test_ray_job_submit_runs_a_dag_and_its_exit_code_tells(tmp_path):
    with ray_head_process(tmp_path, dashboard=True) as (_, env, dashboard_port):
        ok = ray_job_submit(dashboard_port, env, "python", "-m", "jobs.run_dag", "jobs/dags/quant_backtest.yaml",
                            "--params", '{"labels": {"via": "ray-job"}}')
        assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
        assert "fabric: report SUCCEEDED" in ok.stdout  # node progress streams into the job's logs
        assert "fabric: SUCCEEDED quant_backtest" in ok.stdout
        assert "succeeded" in ok.stdout.lower()

        failing = tmp_path / "failing.yaml"
        failing.write_text("version: 1\npipeline_id: failing\n"
                           "nodes: [{id: boom, kind: python_task, entrypoint: 'tests.nodes:boom'}]\n")
        bad = ray_job_submit(dashboard_port, env, "python", "-m", "jobs.run_dag", str(failing))
        assert bad.returncode != 0
        assert "fabric: FAILED failing" in bad.stdout

        rejected = ray_job_submit(dashboard_port, env, "python", "-m", "jobs.run_dag",
                                  '{"version": 1, "pipeline_id": "x", "nodes": [{"id": "a", "kind": "nope"}]}')
        assert rejected.returncode != 0 and "SPEC_UNKNOWN_KIND" in rejected.stdout + rejected.stderr
