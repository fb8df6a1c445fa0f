"""A driver's side of who owns each served name: the registry's privileged served-name methods (ServedMethods in
fabric/actors/served.py), called with the control capability; RayClient's mixin, the gateway's `ServedBook`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fabric.actors.calls import call_registry as _call
from fabric.spec.policy import ServedName


class ServedClient:
    """A driver's `ServedBook` (RayClient's mixin): the registry's privileged served-name methods, with the
    control capability."""

    _registry: Any
    _cap: str
    _retry_for: float

    def served_names(self, names: Sequence[str] | None = None) -> dict[str, ServedName]:
        return _call(self._registry.served_names, self._cap, None if names is None else [*names],
                     retry_for=self._retry_for)

    def claim_served(self, name: str, served: ServedName) -> tuple[ServedName, bool]:
        claim, created = _call(self._registry.claim_served, self._cap, name, served, retry_for=self._retry_for)
        return claim, created

    def update_served(self, name: str, served: ServedName) -> bool:
        return bool(_call(self._registry.update_served, self._cap, name, served, retry_for=self._retry_for))

    def release_served(self, name: str, owner: str) -> bool:
        return bool(_call(self._registry.release_served, self._cap, name, owner, retry_for=self._retry_for))


__all__ = ["ServedClient"]
