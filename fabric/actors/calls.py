"""Calls to the registry actor from a driver: retried across its restarts, its FabricErrors raised as themselves."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from fabric.actors.revive import current_method, revive
from fabric.errors import ErrorCode, FabricError
from fabric.retry import REGISTRY_RESTART_WAIT_S, backoff


def call_registry(method: Any, *args: Any, timeout: float | None = 60.0,
          retry_for: float = REGISTRY_RESTART_WAIT_S) -> Any:
    """Call a registry method; fabric errors come out as themselves, not wrapped by Ray.

    While the registry restarts, calls are retried with backoff. Every registry method is safe to
    repeat: reads are reads, and a submit always carries its idempotency key (see Client.submit).
    """
    delays = backoff(retry_for)
    method = current_method(method)
    while True:
        try:
            return ray.get(method.remote(*args), timeout=timeout)
        except RayTaskError as exc:
            raise _unwrapped(exc) from None
        except (ActorUnavailableError, ActorDiedError) as exc:
            _raise_if_leased(exc)
            delay = next(delays, None)
            if delay is None:
                raise
            method = revive(method) if isinstance(exc, ActorDiedError) else method
            time.sleep(delay)


async def acall_registry(method: Any, *args: Any, timeout: float = 60.0,
                 retry_for: float = REGISTRY_RESTART_WAIT_S) -> Any:
    """`call_registry` for event loops (the gateway): awaits the registry instead of blocking a thread."""
    delays = backoff(retry_for)
    method = current_method(method)
    while True:
        try:
            return await asyncio.wait_for(method.remote(*args), timeout)
        except RayTaskError as exc:
            raise _unwrapped(exc) from None
        except (ActorUnavailableError, ActorDiedError) as exc:
            _raise_if_leased(exc)
            delay = next(delays, None)
            if delay is None:
                raise
            method = await asyncio.to_thread(revive, method) if isinstance(exc, ActorDiedError) else method
            await asyncio.sleep(delay)


_LEASED = re.compile(r"\[STORE_LEASED\] (?P<message>[^\n]*?)(?: \(at (?P<where>[^\n]*)\))?\n\s*fix: (?P<fix>[^\n]*)")


def _raise_if_leased(exc: Exception) -> None:
    """A registry that could not start because another holds its store's lease (fabric/record/lease.py) is not a
    restart to wait out: Ray keeps only the text of the constructor's error, so the FabricError is rebuilt from it."""
    if not (isinstance(exc, ActorDiedError) and exc.actor_init_failed):
        return
    found = _LEASED.search(str(exc))
    if found:
        raise FabricError(found["message"], code=ErrorCode.STORE_LEASED, where=found["where"] or "",
                          fix=found["fix"]) from None


def _unwrapped(exc: RayTaskError) -> BaseException:
    """A FabricError raised in the registry, as itself; anything else as Ray reported it."""
    return exc.cause if isinstance(exc.cause, FabricError) else exc
