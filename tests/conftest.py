"""Shared fixtures: one real local Ray per test module, small and torn down after."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.genai_models"]  # the tiny LLM and encoder fixtures (no download)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fabric_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fabric-home")


@pytest.fixture(scope="module")
def client(fabric_home: Path) -> Iterator[object]:
    """A fabric Client on a fresh local Ray with 2 CPUs (and 4 fake GPUs), one per module."""
    import ray

    import fabric as fb

    os.chdir(REPO)  # workers import `tests.nodes` and `jobs` from the driver's working directory
    fabric_client = fb.connect("local", num_cpus=2, num_gpus=4, home=str(fabric_home))
    yield fabric_client
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def ray_head_process(tmp_path: Path, *, dashboard: bool = False, num_cpus: int = 2,
                     extra_env: dict[str, str] | None = None,
                     autoscaling_config: Path | None = None, port: int | None = None,
                     ) -> Iterator[tuple[str, dict[str, str], int | None]]:
    """A real `ray start --head` with token auth, torn down by PID (never `ray stop`, which would kill
    every Ray on the machine). Yields (address, env for clients, dashboard port or None)."""
    port = port or free_port()
    dashboard_port = free_port() if dashboard else None
    env = {**os.environ, "HOME": str(tmp_path), "FABRIC_HOME": str(tmp_path / "fabric"), "RAY_AUTH_MODE": "token",
           # As with an activated venv: a job's entrypoint `python` is this one, with fabric installed.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    ray_bin = Path(sys.executable).with_name("ray")
    # Short on purpose: Ray's Unix sockets live under it and socket paths must stay under 108 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # The token lives in $HOME/.ray/auth_token, here the test's own HOME; clients read it from there.
    subprocess.run([str(ray_bin), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    flags = ([f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
             if dashboard else ["--include-dashboard=false"])
    if autoscaling_config is not None:
        flags.append(f"--autoscaling-config={autoscaling_config}")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}", *flags,
         "--node-ip-address=127.0.0.1", f"--temp-dir={ray_tmp}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        for wait_port in [port] + ([dashboard_port] if dashboard_port else []):
            while time.monotonic() < deadline:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", wait_port)) == 0:
                        break
                time.sleep(0.5)
        time.sleep(2)
        yield f"127.0.0.1:{port}", env, dashboard_port
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(8)  # a test's cluster: what has not stopped by then is killed (it held teardowns 20 s)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        _kill_leftovers(f"127.0.0.1:{port}")
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _kill_leftovers(gcs_address: str) -> None:
    """Processes of this cluster outside the head's process group (an autoscaler's fake nodes and
    their workers) name its GCS address on their command line: end them too, and only them."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(gcs_address in part for part in process.info["cmdline"] or ()):
                process.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """One real PostgreSQL per test session (tests/pg.py); fails, not skips, when it cannot start, unless
    FABRIC_TEST_NO_POSTGRES=1 says to skip."""
    from tests.pg import NO_POSTGRES, start_postgres

    if os.environ.get(NO_POSTGRES) == "1":
        pytest.skip(f"{NO_POSTGRES}=1: the PostgreSQL tests are skipped on purpose")
    try:
        server = start_postgres()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"could not start PostgreSQL for the tests: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: object) -> str:
    """A fresh, empty database on the session's PostgreSQL, as a postgresql:// URL."""
    return postgres_server.create_database()  # type: ignore[attr-defined]
