"""The control plane's secret and what is derived from it: driver capabilities, attempt grants, name proofs.

The registry, its quota actors and the head sink act only for callers that show a capability derived from
one random key. The key lives in a head-local file (`$FABRIC_HOME/control.key`, mode 0600, or
FABRIC_CONTROL_KEY_FILE); drivers (the gateway, the CLI, the SDK) read it there and never pass it to a task.
A running attempt gets only a grant bound to (submission, node, attempt). Named actors prove they hold the key
with a challenge-response, so a squatter under a fabric name is found before it is told anything.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from functools import lru_cache
from pathlib import Path

from fabric.errors import ErrorCode, FabricError

KEY_FILE = "control.key"
KEY_BYTES = 32


def key_path(home: str, override: str | None = None) -> Path:
    return Path(override) if override else Path(home) / KEY_FILE


def read_key(path: Path) -> bytes | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if len(text) < 2 * KEY_BYTES:
        raise FabricError(f"the control key {path} is not a fabric key", code=ErrorCode.FORBIDDEN, where=str(path),
                          fix="remove the file (on the head) and start the registry again: a new key is made")
    return bytes.fromhex(text)


def load_or_create_key(path: Path) -> bytes:
    """The key at `path`, made (random, mode 0600) if there is none; two processes racing make one key."""
    key = read_key(path)
    if key is not None:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(KEY_BYTES).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)  # fails if another process made the key first: then that one is the key
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)
    found = read_key(path)
    assert found is not None
    return found


@lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)  # the key schedule once per key, not per grant


def derive(key: bytes, *parts: object) -> str:
    mac = _keyed(key).copy()
    mac.update("\0".join(str(p) for p in parts).encode())
    return mac.hexdigest()


def control_cap(key: bytes) -> str:
    """What a driver shows the registry for its privileged methods."""
    return derive(key, "control")


def quota_cap(key: bytes) -> str:
    """What the registry shows a team's quota actor."""
    return derive(key, "quota")


def attempt_grant(key: bytes, submission_id: str, node_id: str, attempt: int) -> str:
    """What one running attempt shows for its own progress, log, heartbeat and promote-audit calls."""
    return derive(key, "attempt", submission_id, node_id, attempt)


def proof(key: bytes, role: str, nonce: str) -> str:
    """A named actor's answer to a challenge: it holds the key, without showing it."""
    return derive(key, "proof", role, nonce)


def attempt_proof(grant: str, nonce: str) -> str:
    """The head sink's answer to an attempt's challenge: it can make that attempt's grant (so it holds the key)."""
    return derive(grant.encode(), "sink", nonce)


def new_nonce() -> str:
    return secrets.token_hex(16)


def check(expected: str, given: object, what: str) -> None:
    """Refuse a call whose capability is not `expected` (constant-time), as FORBIDDEN."""
    if not (isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())):
        raise FabricError(f"{what} needs fabric's control capability, which this caller does not hold",
                          code=ErrorCode.FORBIDDEN, where="control plane",
                          fix="call it through the gateway, the CLI or the SDK (fb.connect) of a driver that can "
                              "read the head's control key; tenant code cannot")


def impostor(name: str, why: str) -> FabricError:
    return FabricError(
        f"the actor {name!r} in namespace 'fabric' is not fabric's: {why}", code=ErrorCode.CONTROL_IMPOSTOR,
        where=name, fix=f"remove the impostor (`ray kill`, or `ray.kill(ray.get_actor({name!r}, namespace='fabric'))` "
        "from a trusted driver) and connect again; if this process's key is not the head's, copy the head's "
        "$FABRIC_HOME/control.key here (mode 0600) and set FABRIC_CONTROL_KEY_FILE")


__all__ = ["KEY_FILE", "attempt_grant", "attempt_proof", "check", "control_cap", "derive", "impostor", "key_path",
           "load_or_create_key", "new_nonce", "proof", "quota_cap", "read_key"]
