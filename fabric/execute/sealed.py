"""Ray actor classes that run nothing but their own methods (Ray's built-in `__ray_call__` is refused) and unpickle
nothing but plain data (execute/untrusted.py).

Every Ray actor answers `handle.__ray_call__.remote(fn)` by running `fn(self)` in the actor, which would hand
any tenant task the registry's key and store. A sealed class overrides it; its other methods are the whole
surface, so the control plane's faces keep no helper methods that a caller could use (Ray exposes every
method, underscored or not). Ray unpickles every call's arguments before the method runs, so before a
capability is checked: a sealed actor's process builds only plain data from them (`untrusted.harden`).
"""

from __future__ import annotations

import functools
from typing import Any

import ray.actor

from fabric.execute.untrusted import harden


def _refused(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    raise PermissionError(f"{type(self).__name__} runs only its own methods: __ray_call__ is refused")


def sealed(cls: type) -> type:
    """`cls` as Ray would wrap it, with `__ray_call__` refused (ray.remote keeps a class already wrapped)."""
    wrapped: type = ray.actor._modify_class(cls)
    wrapped.__ray_call__ = _refused  # type: ignore[attr-defined]
    init: Any = cls.__init__  # type: ignore[misc]

    @functools.wraps(init)  # Ray binds `.remote(...)` arguments against this signature
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        harden()  # in the actor's process only: the class itself stays usable in tests and drivers
        init(self, *args, **kwargs)

    setattr(wrapped, "__init__", __init__)  # noqa: B010 - mypy refuses assigning a method
    return wrapped


__all__ = ["sealed"]
