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


# Ray runs this at a worker process's start, before it loads any actor class (`worker_process_setup_hook`, as a
# module path in this env var of the actor's runtime_env): how a class that fabric does not make gets sealed.
SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
SEAL_HOOK = "fabric.execute.sealed.seal_process"


def seal_process() -> None:
    """In this worker process, every actor class Ray loads from now on answers `__ray_call__` with a refusal.

    For actors whose class another library makes (Ray Serve's replicas of the gateway, which hold the control
    key): Ray builds each method's executor when it loads the class, so the refusal is put in before that."""
    from ray._private.function_manager import FunctionActorManager

    make = FunctionActorManager._make_actor_method_executor
    if getattr(make, "fabric_sealed", False):
        return

    def sealed_make(self: Any, method_name: str, method: Any) -> Any:
        return make(self, method_name, _refused if method_name == "__ray_call__" else method)

    sealed_make.fabric_sealed = True  # type: ignore[attr-defined]
    FunctionActorManager._make_actor_method_executor = sealed_make  # type: ignore[method-assign]


def require_sealed(what: str) -> None:
    """Refuse to go on in a Ray actor process that `seal_process` did not seal at its start (a Serve config whose
    `ray_actor_options` dropped the runtime_env below): such a process would take `__ray_call__` from any task."""
    import ray
    from ray._private.function_manager import FunctionActorManager

    worker = ray._private.worker.global_worker
    if getattr(worker, "mode", None) != ray.WORKER_MODE:
        return  # a driver or a test that builds the class in-process: nothing can __ray_call__ it
    if not getattr(FunctionActorManager._make_actor_method_executor, "fabric_sealed", False):
        raise RuntimeError(f"{what} must run in a sealed process: give its actor the runtime_env env var "
                           f"{SETUP_HOOK_ENV}={SEAL_HOOK} (docs/security.md), as serve/config.yaml does")


def sealing_runtime_env() -> dict[str, Any]:
    """The runtime_env of an actor whose process `seal_process` seals at its start."""
    return {"env_vars": {SETUP_HOOK_ENV: SEAL_HOOK}}


__all__ = ["SEAL_HOOK", "SETUP_HOOK_ENV", "require_sealed", "seal_process", "sealed", "sealing_runtime_env"]
