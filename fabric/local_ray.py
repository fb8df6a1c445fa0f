"""Which Ray a plain `ray.init()` would join, and whether it still answers: no minutes-long hang on a dead one.

Ray records the last `ray start --head` in `<temp dir>/ray/ray_current_cluster`. A head killed hard (SIGKILL,
OOM) leaves that file behind, and `ray.init()` with no address then waits for minutes on the dead GCS.
A socket connect to the GCS port tells within a second. Pure standard library: no Ray imported here.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fabric.errors import ErrorCode, FabricError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0  # a local GCS answers in milliseconds; a dead one refuses at once or never answers
EXPLICIT_PROBE_TIMEOUT_S = 3.0  # an address the user gave may be a remote head across a slower network

Probe = Callable[[str, float], bool]


def ray_temp_dir(env: Mapping[str, str] | None = None) -> Path:
    """Ray's default temp dir, as `ray._common.utils.get_default_ray_temp_dir` computes it."""
    env = os.environ if env is None else env
    if "RAY_TMPDIR" in env:
        base = env["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in env:
        base = env["TMPDIR"]
    elif sys.platform.startswith(("linux", "darwin")):
        base = "/tmp"
    else:
        base = tempfile.gettempdir()
    return Path(base) / "ray"


def current_cluster_file(env: Mapping[str, str] | None = None) -> Path:
    """The file where `ray start` records the address that a plain `ray.init()` joins."""
    return ray_temp_dir(env) / "ray_current_cluster"


def recorded_address(env: Mapping[str, str] | None = None) -> str | None:
    """The address in Ray's current-cluster file, or None when there is none."""
    try:
        text = current_cluster_file(env).read_text().strip()
    except OSError:
        return None
    return text or None


def gcs_answers(address: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at `host:port` within `timeout` seconds."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class RayTarget:
    """What `ray.init(address)` would do: join `address` (None: start a local Ray), and whether it answers."""

    address: str | None  # host:port to join; None to start a local Ray
    source: str  # "argument", "RAY_ADDRESS", "ray_current_cluster" or "none"
    alive: bool | None  # None when nothing is to be joined or it cannot be probed (ray:// client addresses)
    file: Path  # Ray's current-cluster file, stale or not

    @property
    def stale_file(self) -> bool:
        return self.source == "ray_current_cluster" and self.alive is False


def ray_target(address: str | None, env: Mapping[str, str] | None = None, probe: Probe = gcs_answers) -> RayTarget:
    """Resolve an address as `ray.init` does (RAY_ADDRESS wins over None/"auto"; then the current-cluster
    file) and probe the GCS it names."""
    env = os.environ if env is None else env
    file = current_cluster_file(env)
    if address in (None, "auto") and env.get("RAY_ADDRESS"):
        address, source = env["RAY_ADDRESS"], "RAY_ADDRESS"
    elif address in (None, "auto"):
        recorded = recorded_address(env)
        if recorded is None:
            # None starts a local Ray; "auto" lets Ray look for a running GCS process, and say so if none.
            return RayTarget(None if address is None else "auto", "none", None, file)
        address, source = recorded, "ray_current_cluster"
    else:
        source = "argument"
    if address == "local" or address.startswith("ray://"):
        return RayTarget(None if address == "local" else address, source, None, file)
    timeout = PROBE_TIMEOUT_S if source == "ray_current_cluster" else EXPLICIT_PROBE_TIMEOUT_S
    return RayTarget(address, source, probe(address, timeout), file)


def init_address(address: str | None, env: Mapping[str, str] | None = None, probe: Probe = gcs_answers) -> str | None:
    """The address to give `ray.init`: a stale recorded local Ray is forgotten (warned, its file removed) and a
    fresh local Ray started; an address that was asked for and does not answer stops here, with the fix."""
    target = ray_target(address, env, probe)
    if target.alive is not False:
        return address
    if target.stale_file and address is None:
        log.warning("Ray's %s names %s, which does not answer (a local Ray that was killed): starting a fresh "
                    "local Ray", target.file, target.address)
        try:
            target.file.unlink()  # as `ray stop` would: the next plain `ray.init()` starts fresh too
        except OSError:
            pass
        return "local"
    raise FabricError(f"no Ray answers at {target.address} (from {target.source})", code=ErrorCode.RAY_UNREACHABLE,
                      where=target.source, fix=_fix(target))


def _fix(target: RayTarget) -> str:
    if target.source == "ray_current_cluster":
        return (f"that Ray was stopped or killed: start it again (`ray start --head`), remove {target.file}, "
                "or connect with no address to start a local Ray")
    if target.source == "RAY_ADDRESS":
        return "start that cluster, or unset RAY_ADDRESS to start a local Ray"
    return "check the host and port (the head's GCS port, 6379 by default), or start it with `ray start --head`"


# Ray Serve calls this in each HTTP proxy it starts: the gateway's guard refuses floods there (serve/proxy_guard.py).
SERVE_PROXY_CALLBACK = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_GUARD = "serve.proxy_guard:middlewares"


def prepare_env(address: str | None) -> None:
    """Before `ray.init(address)`: join a cluster by address with token auth where a token is set up; a Ray
    started here (None may start one) gets the gateway's guard in its Serve proxies, unless another is named."""
    if address not in (None, "local"):
        use_ray_token_auth()
    else:
        os.environ.setdefault(SERVE_PROXY_CALLBACK, PROXY_GUARD)


def use_ray_token_auth() -> None:
    """Ray 2.60 clusters require a token, but a client joining by address sends it only when told to:
    turn it on when a token file exists and the user has not chosen a mode."""
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if "RAY_AUTH_MODE" not in os.environ and (Path(token_path).exists() or os.environ.get("RAY_AUTH_TOKEN")):
        os.environ["RAY_AUTH_MODE"] = "token"
