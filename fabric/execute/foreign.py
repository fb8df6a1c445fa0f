"""Another team's node values in a driver that holds the control key: opened in a worker, rebuilt here as plain
data only (RaySubmission.result, docs/security.md)."""

from __future__ import annotations

import pickle
from typing import Any

import ray

from fabric.errors import ErrorCode, FabricError
from fabric.execute.backend import off_head
from fabric.execute.untrusted import UnsafePayload, safe_loads


def _pickled(boxed: list[Any]) -> list[Any]:
    """In a worker (where tenant code runs anyway): a node's value as pickle bytes, or its error as text, so that
    the driver never unpickles what the node's code made (not even an exception it raised)."""
    import ray.cloudpickle

    try:
        return ["value", ray.cloudpickle.dumps(ray.get(boxed[0]))]
    except BaseException as exc:  # noqa: BLE001 - every failure comes back as plain text
        return ["error", f"{type(exc).__name__}: {str(exc)[-2000:]}"]


_pickled_remote: Any = None


def foreign_value(ref: Any, where: str, team: list[Any], timeout: float | None = None) -> Any:
    """Another team's node value, opened in a worker off the head and sent here as bytes that this process builds
    plain data from (execute/untrusted.py `safe_loads`): nothing its code chose runs in a key-holding driver."""
    global _pickled_remote
    if _pickled_remote is None:
        _pickled_remote = ray.remote(_pickled)
    kind, body = ray.get(_pickled_remote.options(**off_head({"num_cpus": 0, "max_retries": 0})).remote([ref]),
                         timeout=timeout)
    if kind == "error":
        raise FabricError(f"{where} has no value: {body}", code=ErrorCode.NODE_FAILED, where=where,
                          fix="read the node's logs (`fabric logs`)")
    try:
        return safe_loads(body)
    except (UnsafePayload, pickle.UnpicklingError, ValueError, TypeError, EOFError) as exc:
        owner = team[0] if team else "?"
        raise FabricError(f"{where} belongs to team {owner!r}, not this client's, and its value is not plain "
                          f"data: {exc}", code=ErrorCode.UNSAFE_PAYLOAD, where=where,
                          fix="read it from a driver of its own team (fb.connect(team=...)), or have the node write "
                              "a file to its artifact dir; a value is its code's pickle, and this process holds "
                              "the control key") from None


__all__ = ["foreign_value"]
