"""`fabric doctor`: checks what a newcomer trips over (Ray, its token auth, a stale local Ray, the store, the
gateway, versions) and says for each what is wrong and the fix. The checks are pure functions of the
environment and injected probes, so they are tested without Ray."""

from __future__ import annotations

import os
import platform
import stat
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import typer

from fabric.cli.common import fabric_version
from fabric.cli.exits import ExitCode
from fabric.cli.output import Output, OutputOpt, emit
from fabric.errors import FabricError
from fabric.local_ray import Probe, current_cluster_file, gcs_answers, ray_target, recorded_address
from fabric.settings import Settings

RAY_PINNED = "2.60.0"  # pyproject's ray==; another Ray speaks another protocol to the cluster
Fetch = Callable[[str, Mapping[str, str], float], int]  # GET url with headers -> HTTP status (0: no answer)


class Level(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    message: str
    fix: str = ""


def _settings(env: Mapping[str, str]) -> Settings:
    """The FABRIC_* settings as the CLI reads them; the defaults when one does not parse (`check_settings`
    reports that)."""
    try:
        return Settings.from_env(env)
    except FabricError:
        return Settings.from_env({})


def check_settings(env: Mapping[str, str]) -> Check:
    try:
        Settings.from_env(env)
    except FabricError as exc:
        return Check("settings", Level.FAIL, exc.message, exc.fix)
    return Check("settings", Level.OK, "every FABRIC_* variable parses (docs/settings.md)")


def check_versions(versions: Mapping[str, str]) -> Check:
    text = ", ".join(f"{name} {value}" for name, value in versions.items())
    if versions.get("ray") not in (RAY_PINNED, None):
        return Check("versions", Level.WARN, f"{text}: fabric is built and tested on ray {RAY_PINNED}",
                     f"pip install 'ray[default]=={RAY_PINNED}'")
    return Check("versions", Level.OK, text)


def check_stale_ray(env: Mapping[str, str], probe: Probe = gcs_answers) -> Check:
    """Ray's current-cluster file: absent, live, or naming a dead GCS (a local Ray that was killed)."""
    file = current_cluster_file(env)
    recorded = recorded_address(env)
    if recorded is None:
        return Check("local ray address", Level.OK, f"no recorded local Ray ({file} absent)")
    if probe(recorded, 1.0):
        return Check("local ray address", Level.OK, f"{file} names {recorded}, which answers")
    return Check("local ray address", Level.WARN,
                 f"stale: {file} names {recorded}, which does not answer (a local Ray that was killed); a plain "
                 "`ray.init()` waits minutes on it",
                 f"nothing to do for fabric: fb.connect() and `fabric run` start a fresh local Ray and remove it. "
                 f"Else `rm {file}`, or start that Ray again with `ray start --head`")


def check_ray(env: Mapping[str, str], probe: Probe = gcs_answers) -> Check:
    """The Ray that `fabric submit/ls/status` would join (FABRIC_ADDRESS, RAY_ADDRESS, then the recorded one)."""
    address = _settings(env).address
    if address and address.startswith(("http://", "https://")):
        return Check("ray", Level.OK, "FABRIC_ADDRESS is a gateway URL: no Ray needed on this side")
    target = ray_target(address, env, probe)
    if target.source == "none":
        return Check("ray", Level.OK, "no Ray is running here: `fabric run` and fb.connect() start a local one",
                     "for `fabric submit`/`ls`/`status`, start one with `fabric up` or `ray start --head`")
    if target.alive is None:
        return Check("ray", Level.OK, f"{target.address} (from {target.source}): a Ray Client address, not probed")
    if target.alive:
        return Check("ray", Level.OK, f"Ray answers at {target.address} (from {target.source})")
    if target.stale_file:
        return Check("ray", Level.OK, "no live Ray is recorded here: `fabric run` and fb.connect() start a fresh one",
                     "for `fabric submit`/`ls`/`status`, start one with `fabric up` or `ray start --head`")
    variable = "FABRIC_ADDRESS" if _settings(env).address else target.source
    return Check("ray", Level.FAIL, f"no Ray answers at {target.address} (from {variable})",
                 f"start that cluster, or fix/unset {variable}")


def check_auth(env: Mapping[str, str]) -> Check:
    """Ray 2.60's token auth: the mode, and whether the token it needs is there (and private)."""
    mode = (env.get("RAY_AUTH_MODE") or "").lower()
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path(env.get("HOME") or Path.home()) / ".ray" / "auth_token")
    has_token = bool(env.get("RAY_AUTH_TOKEN")) or path.exists()
    if mode == "disabled":
        return Check("ray token auth", Level.WARN, "RAY_AUTH_MODE=disabled: anyone who reaches the Ray ports "
                     "controls the cluster", "unset RAY_AUTH_MODE (token auth is Ray's default)")
    if mode == "token" and not has_token:
        return Check("ray token auth", Level.FAIL, f"RAY_AUTH_MODE=token but no token: {path} is absent and "
                     "RAY_AUTH_TOKEN is unset: Ray will answer 401",
                     "copy the head's token there (`ray get-auth-token` on the head), or set RAY_AUTH_TOKEN_PATH")
    if path.exists() and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        return Check("ray token auth", Level.WARN, f"{path} is readable by other users: they could control Ray",
                     f"chmod 600 {path}")
    if not mode:
        detail = (f"token at {path}; fabric sends it when joining by address" if has_token
                  else "no token yet: a local Ray started by fabric makes one")
        return Check("ray token auth", Level.OK, f"RAY_AUTH_MODE unset ({detail})",
                     "" if not has_token else "for Ray's own CLI (`ray job submit`) against a cluster, also export "
                     "RAY_AUTH_MODE=token")
    return Check("ray token auth", Level.OK, f"RAY_AUTH_MODE={mode}, token " +
                 ("from RAY_AUTH_TOKEN" if env.get("RAY_AUTH_TOKEN") else f"at {path}"))


def check_store(env: Mapping[str, str]) -> Check:
    """$FABRIC_HOME (the store, tokens, artifacts) exists or can be made, and takes a write."""
    config = _settings(env)
    home = Path(config.home)
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("store", Level.FAIL, f"FABRIC_HOME {home} is not writable: {exc.strerror or exc}",
                     "set FABRIC_HOME to a directory you can write (every Ray node must see the same path)")
    return Check("store", Level.OK, f"FABRIC_HOME {home} is writable (store: {config.store})")


def _fetch(url: str, headers: Mapping[str, str], timeout: float) -> int:
    request = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def check_gateway(env: Mapping[str, str], fetch: Fetch = _fetch) -> Check:
    """When FABRIC_ADDRESS is the gateway's URL: it answers /healthz, and it takes FABRIC_TOKEN."""
    config = _settings(env)
    url = (config.address or "").rstrip("/")
    if not url.startswith(("http://", "https://")):
        return Check("gateway", Level.OK, "not used (FABRIC_ADDRESS is not an http(s):// URL)")
    if fetch(f"{url}/healthz", {}, 3.0) != 200:
        return Check("gateway", Level.FAIL, f"the gateway at {url} does not answer /healthz",
                     "start it (`fabric up`), or fix FABRIC_ADDRESS")
    token = config.token
    if not token:
        return Check("gateway", Level.WARN, f"{url} answers, but FABRIC_TOKEN is unset: every call gets a 401",
                     "export FABRIC_TOKEN=... (make one with `fabric token --team NAME`)")
    answer = fetch(f"{url}/api/orch/submissions?limit=1", {"Authorization": f"Bearer {token}"}, 5.0)
    if answer in (401, 403):
        return Check("gateway", Level.FAIL, f"{url} refuses FABRIC_TOKEN ({answer})",
                     "use a token from this gateway's tokens file (`fabric token --team NAME` beside it)")
    if answer != 200:
        return Check("gateway", Level.WARN, f"{url} answers /healthz but its API gave {answer or 'no answer'}",
                     "see the gateway's log (`serve` logs under the Ray session dir)")
    return Check("gateway", Level.OK, f"{url} answers and takes FABRIC_TOKEN")


def installed_versions() -> dict[str, str]:
    try:
        ray_version = version("ray")
    except PackageNotFoundError:
        ray_version = "not installed"
    return {"fabric": fabric_version(), "ray": ray_version, "python": platform.python_version()}


def run_checks(env: Mapping[str, str] | None = None, probe: Probe = gcs_answers, fetch: Fetch = _fetch,
               versions: Mapping[str, str] | None = None) -> list[Check]:
    env = os.environ if env is None else env
    return [check_versions(versions or installed_versions()), check_settings(env), check_ray(env, probe),
            check_stale_ray(env, probe), check_auth(env), check_store(env), check_gateway(env, fetch)]


def _table(checks: list[Check]) -> Any:
    from rich.table import Table

    colour = {Level.OK: "green", Level.WARN: "yellow", Level.FAIL: "bold red"}
    table = Table(show_edge=False, show_lines=False)
    for column in ("check", "", "what", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(check.name, f"[{colour[check.level]}]{check.level}[/]", check.message, check.fix)
    return table


def doctor(output: OutputOpt = Output.TABLE) -> None:
    """Check this machine: versions, settings, Ray reachable, a stale local Ray, Ray token auth, the store, the
    gateway; each with what is wrong and the fix. Exits 1 when a check FAILs."""
    checks = run_checks()
    emit([asdict(check) for check in checks], output, lambda: _table(checks))
    raise typer.Exit(ExitCode.FAILED if any(c.level is Level.FAIL for c in checks) else ExitCode.OK)
