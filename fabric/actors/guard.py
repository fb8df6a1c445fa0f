"""Driver-side halves of the control plane's capabilities: a handle that shows one on every call, and the
challenge that tells fabric's named actors from squatters before they are told anything."""

from __future__ import annotations

from typing import Any

import ray

from fabric.capability import impostor, new_nonce, proof

PROVE_TIMEOUT_S = 60.0  # a fresh actor on a busy head may take a while to start


class _CappedMethod:
    def __init__(self, method: Any, cap: str) -> None:
        self._method, self._cap = method, cap

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._method.remote(self._cap, *args, **kwargs)


class Capped:
    """An actor handle whose method calls carry `cap` as their first argument (`h.book.remote(...)`)."""

    def __init__(self, handle: Any, cap: str) -> None:
        self.handle, self._cap = handle, cap

    def __getattr__(self, name: str) -> _CappedMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _CappedMethod(getattr(self.handle, name), self._cap)


def verified(handle: Any, key: bytes, name: str, timeout: float = PROVE_TIMEOUT_S) -> Any:
    """`handle` once the actor proved it holds `key` (CONTROL_IMPOSTOR otherwise); a dead or slow actor's error
    passes through as it is (a restart to wait out, not a squatter)."""
    nonce = new_nonce()
    try:
        prove = handle.prove
    except AttributeError:
        raise impostor(name, "it has no `prove` method: something else was started under fabric's name") from None
    try:
        answer = ray.get(prove.remote(nonce), timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        raise impostor(name, f"its proof failed ({type(exc.cause).__name__})") from None
    if answer != proof(key, name, nonce):
        raise impostor(name, "it could not prove it holds this process's control key")
    return handle


__all__ = ["Capped", "verified"]
