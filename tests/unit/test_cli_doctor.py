"""`fabric doctor`'s checks and the stale-local-Ray probe (fabric/local_ray.py), on real sockets and files."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fabric.cli import doctor
from fabric.cli.doctor import Level, run_checks
from fabric.errors import ErrorCode, FabricError
from fabric.local_ray import current_cluster_file, gcs_answers, init_address, ray_target


@pytest.fixture()
def listening() -> Iterator[str]:
    """A port where something answers, as a live GCS would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture()
def dead() -> str:
    """A port where nothing answers, as after a head was SIGKILLed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _env(tmp_path: Path, recorded: str | None = None, **extra: str) -> dict[str, str]:
    env = {"RAY_TMPDIR": str(tmp_path / "raytmp"), "HOME": str(tmp_path / "home"),
           "FABRIC_HOME": str(tmp_path / "fabric"), **extra}
    if recorded is not None:
        current_cluster_file(env).parent.mkdir(parents=True, exist_ok=True)
        current_cluster_file(env).write_text(recorded)
    return env


def test_the_file_is_where_ray_looks_for_it(tmp_path, monkeypatch):
    from ray._common.utils import get_ray_address_file

    for variables in ({"RAY_TMPDIR": str(tmp_path)}, {"TMPDIR": str(tmp_path / "t")}, {}):
        for name in ("RAY_TMPDIR", "TMPDIR"):
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        assert current_cluster_file() == Path(get_ray_address_file(None))


def test_the_probe_tells_a_live_port_from_a_dead_one_quickly(listening, dead):
    import time

    assert gcs_answers(listening)
    started = time.monotonic()
    assert not gcs_answers(dead) and not gcs_answers("not-an-address")
    assert time.monotonic() - started < 2


def test_a_stale_recorded_ray_is_forgotten_and_a_fresh_one_started(tmp_path, dead, caplog):
    env = _env(tmp_path, dead)
    assert ray_target(None, env).stale_file
    assert init_address(None, env) == "local"
    assert not current_cluster_file(env).exists()  # the next plain `ray.init()` starts fresh too
    assert "does not answer" in caplog.text


def test_a_live_recorded_ray_is_joined(tmp_path, listening):
    env = _env(tmp_path, listening)
    assert init_address(None, env) is None and init_address("auto", env) == "auto"
    assert current_cluster_file(env).exists()
    assert init_address(None, _env(tmp_path / "empty")) is None  # nothing recorded: Ray starts a local one


def test_an_address_that_was_asked_for_and_is_dead_stops_with_the_fix(tmp_path, dead):
    for address, env in ((dead, _env(tmp_path)), ("auto", _env(tmp_path, dead)),
                         (None, _env(tmp_path / "x", RAY_ADDRESS=dead))):
        with pytest.raises(FabricError) as caught:
            init_address(address, env)
        assert caught.value.code == ErrorCode.RAY_UNREACHABLE and caught.value.fix
    assert init_address("local", _env(tmp_path, dead)) == "local"
    assert init_address("ray://10.0.0.1:10001", _env(tmp_path)) == "ray://10.0.0.1:10001"  # not probed


def test_doctor_says_a_recorded_ray_is_stale(tmp_path, dead, listening):
    stale = doctor.check_stale_ray(_env(tmp_path, dead))
    assert stale.level is Level.WARN and "stale" in stale.message and dead in stale.message and "rm " in stale.fix
    assert doctor.check_ray(_env(tmp_path, dead)).level is Level.OK  # fabric starts a fresh one: not a failure
    assert doctor.check_stale_ray(_env(tmp_path / "l", listening)).level is Level.OK
    assert doctor.check_ray(_env(tmp_path / "l", listening)).level is Level.OK
    failed = doctor.check_ray(_env(tmp_path / "f", FABRIC_ADDRESS=dead))
    assert failed.level is Level.FAIL and "FABRIC_ADDRESS" in failed.fix


def test_token_auth_checks(tmp_path):
    env = _env(tmp_path, RAY_AUTH_MODE="token")
    assert doctor.check_auth(env).level is Level.FAIL  # token mode and no token: 401
    token = Path(env["HOME"]) / ".ray" / "auth_token"
    token.parent.mkdir(parents=True)
    token.write_text("secret")
    os.chmod(token, 0o644)  # as Ray writes it
    assert doctor.check_auth(env).level is Level.WARN and "chmod 600" in doctor.check_auth(env).fix
    os.chmod(token, 0o600)
    assert doctor.check_auth(env).level is Level.OK
    assert doctor.check_auth({**env, "RAY_AUTH_MODE": "disabled"}).level is Level.WARN


def test_store_must_be_writable(tmp_path):
    assert doctor.check_store(_env(tmp_path)).level is Level.OK
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert doctor.check_store({"FABRIC_HOME": str(blocker / "home")}).level is Level.FAIL


def test_gateway_checks_health_and_token():
    env = {"FABRIC_ADDRESS": "http://gw:8000", "FABRIC_TOKEN": "t"}
    assert doctor.check_gateway({}).level is Level.OK
    assert doctor.check_gateway(env, lambda url, headers, timeout: 0).level is Level.FAIL
    assert doctor.check_gateway(env, lambda url, headers, timeout: 200 if "healthz" in url else 401).level is Level.FAIL
    assert doctor.check_gateway(env, lambda url, headers, timeout: 200).level is Level.OK
    assert doctor.check_gateway({"FABRIC_ADDRESS": "http://gw"}, lambda *_: 200).level is Level.WARN


def test_a_setting_that_does_not_parse_is_a_failure(tmp_path):
    bad = doctor.check_settings(_env(tmp_path, FABRIC_STORE="postgres-maybe"))
    assert bad.level is Level.FAIL and "FABRIC_STORE" in bad.message and bad.fix
    assert doctor.check_settings(_env(tmp_path)).level is Level.OK


def test_versions():
    assert doctor.check_versions({"fabric": "0.1.0", "ray": "2.60.0", "python": "3.11.7"}).level is Level.OK
    assert doctor.check_versions({"fabric": "0.1.0", "ray": "2.9.0", "python": "3.11.7"}).level is Level.WARN


def test_doctor_command_exit_code_and_json(tmp_path, dead):
    from fabric.cli import app

    env = _env(tmp_path, dead)
    result = CliRunner().invoke(app, ["doctor", "-o", "json"], env={**env, "FABRIC_ADDRESS": "", "RAY_ADDRESS": ""})
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["local ray address"]["level"] == "WARN" and "stale" in checks["local ray address"]["message"]
    assert set(checks) == {c.name for c in run_checks(env)}
    failing = CliRunner().invoke(app, ["doctor"], env={**env, "FABRIC_ADDRESS": dead, "COLUMNS": "200"})
    assert failing.exit_code == 1 and "FAIL" in failing.stdout
