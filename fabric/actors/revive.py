"""A registry that died for good (killed, or out of restarts) is started anew by the next caller.

Ray restarts the registry actor by itself (`max_restarts=-1`); but an actor killed with
`no_restart=True`, or lost with its node's restarts spent, stays dead, and every handle on it answers
`ActorDiedError`. The caller that sees that (the SDK, the gateway) starts a new registry under the same
name and FABRIC_HOME: it resumes every RUNNING submission from the store, as a restarted one does.
Idempotent across callers: `get_if_exists` makes every caller find the one that won. The successor must prove
it holds the caller's control key (fabric/actors/guard.py): a squatter that took the freed name is refused.
"""

from __future__ import annotations

import threading
from typing import Any

import ray

_lock = threading.Lock()
_homes: dict[Any, tuple[str, bytes]] = {}  # registry actor id -> its FABRIC_HOME (asked once) and the control key
_successors: dict[Any, Any] = {}  # a dead registry's actor id -> the handle that replaced it
_cluster: list[str] = []  # the GCS these were learnt on: actor ids repeat across clusters (job id + counter)


def remember_home(handle: Any, key: bytes) -> None:
    """Ask a live registry where its record is, so that a successor can be started on the same one. What was
    learnt on another cluster is forgotten: a fresh cluster's registry can have a dead one's actor id."""
    home = ray.get(handle.home_dir.remote(), timeout=60)
    gcs = ray.get_runtime_context().gcs_address
    with _lock:
        if _cluster != [gcs]:
            _homes.clear()
            _successors.clear()
            _cluster[:] = [gcs]
        _successors.pop(handle._actor_id, None)
        _homes[handle._actor_id] = (home, key)


def current_method(method: Any) -> Any:
    """`method` on the newest registry known to replace its actor (itself if none did)."""
    handle = method._actor
    while handle._actor_id in _successors:
        handle = _successors[handle._actor_id]
    return method if handle is method._actor else getattr(handle, method._method_name)


def revive(method: Any) -> Any:
    """After ActorDiedError: `method` on the registry now under the name, starting one if none is.
    A restarting actor keeps its id: then nothing changes and the caller just retries."""
    from fabric.actors.control import get_or_create_registry
    from fabric.actors.guard import verified
    from fabric.actors.registry import REGISTRY_NAME
    from fabric.errors import ErrorCode, FabricError

    old = method._actor
    known = _homes.get(old._actor_id)
    if known is None:
        return method  # not a registry this process connected to: nothing to start
    home, key = known
    try:
        handle = get_or_create_registry(home)
    except Exception:  # noqa: BLE001 - the name may still be held by the dying actor: the next retry tries again
        return method
    if handle._actor_id == old._actor_id:
        return method
    try:
        verified(handle, key, REGISTRY_NAME, timeout=10.0)  # still starting: the caller's next retry asks again
    except FabricError as exc:
        if exc.code == ErrorCode.CONTROL_IMPOSTOR:
            raise
        return method
    except Exception:  # noqa: BLE001 - still starting, or dying: the next retry asks again
        return method
    with _lock:
        _homes[handle._actor_id] = (home, key)
        _successors[old._actor_id] = handle
    return getattr(handle, method._method_name)
