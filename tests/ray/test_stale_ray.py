"""A local Ray killed with SIGKILL leaves Ray's current-cluster file behind: `fabric doctor` says so, and
`fb.connect()` starts a fresh Ray within 15 s instead of waiting minutes on the dead GCS. Everything lives in a
private RAY_TMPDIR and HOME, so no other Ray on the machine is touched (and nothing calls `ray stop`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from fabric.local_ray import current_cluster_file, gcs_answers
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

CONNECT = """
import json, time
import ray
import fabric as fb
import fabric.client
probe = []
resolve = fabric.client.init_address
def timed(address):
    begun = time.monotonic()
    try:
        return resolve(address)
    finally:
        probe.append(time.monotonic() - begun)
fabric.client.init_address = timed  # to report the probe's own share of the time
started = time.monotonic()
client = fb.connect()  # as a user types it: no address, no sizes
took = time.monotonic() - started
print(json.dumps({"seconds": took, "probe_seconds": sum(probe), "ping": client.ping(),
                  "gcs": ray.get_runtime_context().gcs_address}))
ray.shutdown()
"""


def _kill_leftovers(marker: str) -> None:
    """Every process of ours whose command line names the private temp dir, by PID."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
            try:
                proc.kill()
            except psutil.Error:
                pass


@pytest.fixture()
def stale_env(tmp_path):
    """The state a SIGKILLed local head leaves: Ray's current-cluster file names a GCS that does not answer."""
    ray_tmp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "HOME": str(tmp_path), "FABRIC_HOME": str(tmp_path / "fabric"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "200"}
    for name in ("RAY_ADDRESS", "FABRIC_ADDRESS", "RAY_AUTH_MODE", "TMPDIR"):
        env.pop(name, None)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    port = free_port()
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", "--node-ip-address=127.0.0.1"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        file = current_cluster_file(env)
        deadline = time.monotonic() + 90
        while not (file.exists() and gcs_answers(f"127.0.0.1:{port}")) and time.monotonic() < deadline:
            assert head.poll() is None, "ray start --head exited"
            time.sleep(0.5)
        assert file.read_text().strip().endswith(f":{port}"), file.read_text()
        os.killpg(head.pid, signal.SIGKILL)  # as the OOM killer would: no clean-up, the file stays
        head.wait(10)
        _kill_leftovers(ray_tmp)
        while gcs_answers(f"127.0.0.1:{port}") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert file.exists() and not gcs_answers(f"127.0.0.1:{port}")
        yield env, file, port
    finally:
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _kill_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_doctor_names_the_stale_address_and_connect_starts_fresh_within_15_s(stale_env):
    env, file, port = stale_env
    doctor = subprocess.run([sys.executable, "-m", "fabric.cli", "doctor", "-o", "json"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr  # a WARN: fabric copes with it
    checks = {check["name"]: check for check in json.loads(doctor.stdout)}
    stale = checks["local ray address"]
    assert stale["level"] == "WARN" and "stale" in stale["message"] and f":{port}" in stale["message"]

    # The yardstick first: the same start with no stale file (it also warms the page cache for both).
    clean_tmp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    try:
        clean = _connect({**env, "RAY_TMPDIR": clean_tmp})
    finally:
        _kill_leftovers(clean_tmp)
        shutil.rmtree(clean_tmp, ignore_errors=True)
    stale = _connect(env)
    assert not stale["gcs"].endswith(f":{port}")  # a fresh Ray, not the dead one
    assert "does not answer" in stale["stderr"]  # the warning says what happened
    assert not file.exists() or not file.read_text().strip().endswith(f":{port}")
    print(f"fb.connect(): {stale['seconds']:.1f}s with a stale address (probe {stale['probe_seconds']:.3f}s), "
          f"{clean['seconds']:.1f}s without")
    assert stale["probe_seconds"] < 2.0
    # 15 s is the bound on an idle machine; on a loaded one the start with no stale file is the yardstick (a start
    # varies by half on 2 busy cores). Without the probe this takes minutes (Ray retries the dead GCS), far past it.
    assert stale["seconds"] < max(15.0, 1.5 * clean["seconds"] + 5.0), (stale, clean)


def _connect(env: dict[str, str]) -> dict:
    """fb.connect() with no address in a fresh process; how long it took, and which GCS it joined."""
    connected = subprocess.run([sys.executable, "-c", CONNECT], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=90)  # without the probe this waits minutes on the dead GCS
    assert connected.returncode == 0, connected.stderr[-3000:]
    reply = json.loads(connected.stdout.strip().splitlines()[-1])
    assert reply["ping"] is True
    return {**reply, "stderr": connected.stderr}
