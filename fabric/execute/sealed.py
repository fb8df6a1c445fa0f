"""Ray actor classes that run nothing but their own methods: Ray's built-in `__ray_call__` is refused.

Every Ray actor answers `handle.__ray_call__.remote(fn)` by running `fn(self)` in the actor, which would hand
any tenant task the registry's key and store. A sealed class overrides it; its other methods are the whole
surface, so the control plane's faces keep no helper methods that a caller could use (Ray exposes every
method, underscored or not).
"""

from __future__ import annotations

from typing import Any

import ray.actor


def _refused(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    raise PermissionError(f"{type(self).__name__} runs only its own methods: __ray_call__ is refused")


def sealed(cls: type) -> type:
    """`cls` as Ray would wrap it, with `__ray_call__` refused (ray.remote keeps a class already wrapped)."""
    wrapped: type = ray.actor._modify_class(cls)
    wrapped.__ray_call__ = _refused  # type: ignore[attr-defined]
    return wrapped


__all__ = ["sealed"]
