"""A worker node that shares no disk with the head: its FABRIC_HOME path is a private tmpfs in its own mount
namespace. Node files, the run report, resume outputs and the whole log (fd-captured, live) still reach the
head's artifact root and FABRIC_HOME, and are served from there."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

import fabric as fb
from fabric.execute.sink import HEAD_RESOURCE
from tests.conftest import REPO, _kill_leftovers, ray_head_process

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

LINES = 1500  # x2 (a child process and print) x ~40 bytes: ~120 KB, well over the 64 KiB tail

DRIVE = "import sys; from tests.ray.test_no_shared_disk import _drive; _drive(*sys.argv[1:])"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="a private tmpfs per node needs root and unshare")


def _spec(release: str) -> dict:
    pinned = {"custom": {"w1": 1}, "cpu": "500m"}
    return {"version": 1, "pipeline_id": "no_shared_disk", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "tests.nodes:chatty", "outs": ["table"],
         "params": {"lines": LINES, "hold_s": 60, "release": release}, "resources": pinned},
        {"id": "b", "kind": "python_task", "entrypoint": "tests.nodes:table_sum", "ins": ["table"],
         "outs": ["total"], "resources": pinned},
    ], "edges": [{"from": "a", "to": "b"}]}


def _drive(address: str, home_dir: str, tmp_dir: str) -> None:
    """The client side, in its own process: Ray reads the cluster's token from that process's environment."""
    home, tmp_path = Path(home_dir), Path(tmp_dir)
    client = fb.connect(address, home=str(home))
    deadline = time.monotonic() + 60
    while sum(1 for n in ray.nodes() if n["Alive"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sum(1 for n in ray.nodes() if n["Alive"]) == 2, "the worker node did not join"

    release = tmp_path / "release"  # outside FABRIC_HOME: the worker sees it, and a stops holding
    submission = client.submit(_spec(str(release)))
    deadline = time.monotonic() + 60
    early = ""
    while time.monotonic() < deadline:
        early = submission.logs("a")
        if "early line from a child process" in early:
            break
        time.sleep(0.3)
    # Live: both early lines (one from Python, one from a child's fd 1) while a still runs.
    assert submission.status().node("a").state == "RUNNING"
    assert "early line from python" in early and "early line from a child process" in early
    release.touch()

    status = submission.wait(150)
    assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
    assert submission.result("b") == sum(range(LINES))

    listing = submission.artifacts()
    assert listing["report"] is True
    assert listing["nodes"]["a"] == ["deep/blob.bin", "metrics.json"]
    sid = submission.id
    assert client.artifact(sid, "a", "metrics.json") == b'{"lines": %d}' % LINES
    assert client.artifact(sid, "a", "deep/blob.bin") == bytes(range(256)) * 4096
    assert b'"a"' in client.artifact(sid, None, "metrics.json")

    text = submission.logs("a")
    assert len(text.encode()) > 100_000
    for i in (0, LINES // 2, LINES - 1):
        assert f"child-line-{i}-padding" in text and f"py-line-{i}-padding" in text
    assert "last line" in text

    # What a resumed run reloads is on the head's disk; the worker's scratch is not (another disk).
    assert (home / "artifacts" / sid / "a" / "outputs" / "outputs.pkl").is_file()
    assert (home / "artifacts" / sid / "a" / "outputs" / "table.arrow").is_file()
    assert (home / "logs" / sid / "a" / "attempt-1.log").stat().st_size > 100_000
    assert not (home / "runs" / sid).exists()
    # The way there was the head's sink actor; a worker on the head would have written directly.
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    assert any(name.startswith("fabric-sink-") for name in names), names
    assert any(HEAD_RESOURCE in n["Resources"] for n in ray.nodes() if n["Alive"])
    ray.shutdown()
    print("DRIVE-OK")


@needs_root
def test_files_report_outputs_and_whole_live_logs_reach_the_head(tmp_path: Path) -> None:
    home = tmp_path / "fabric"
    home.mkdir()
    with ray_head_process(tmp_path, num_cpus=0, extra_env={"PYTHONPATH": str(REPO)}) as (address, env, _):
        ray_bin = Path(sys.executable).with_name("ray")
        worker_env = {**env, "FABRIC_HOME": str(home), "PYTHONPATH": str(REPO),
                      "RAY_AUTH_TOKEN_PATH": str(tmp_path / ".ray" / "auth_token")}
        # The worker sees an empty tmpfs at the head's FABRIC_HOME path: the same path, another disk.
        script = (f'mount -t tmpfs tmpfs "$FABRIC_HOME" && exec {ray_bin} start --address={address} --block '
                  "--num-cpus=2 --resources='{\"w1\": 1}' --node-ip-address=127.0.0.1")
        worker = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                  cwd=REPO, env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            drive = subprocess.run(
                [sys.executable, "-c", DRIVE, address, str(home), str(tmp_path)], cwd=REPO,
                env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=200)
            assert "DRIVE-OK" in drive.stdout, drive.stdout[-3000:] + drive.stderr[-5000:]
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
            _kill_leftovers(address)
