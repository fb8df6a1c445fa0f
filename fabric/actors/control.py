"""The registry as Ray exposes it: every privileged method takes the driver's control capability, a running
attempt's calls take its own grant, and the actor proves to drivers that it holds the head's control key.

Tenant code can `ray.get_actor("fabric-registry")`; what it can do with the handle is this class's surface
only (sealed: no `__ray_call__`, no helper methods). See docs/security.md, "The control plane and tenant code".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from fabric.actors import HEAD_RESOURCE, NAMESPACE
from fabric.actors.guard import verified
from fabric.actors.heap import collect_rarely
from fabric.actors.registry import REGISTRY_NAME, Registry
from fabric.capability import attempt_grant, check, control_cap, load_or_create_key, proof
from fabric.execute.sealed import sealed
from fabric.states import PROMOTE_SUBJECT

# Driver-only: submit and every read or change of any team's work, the kill-switch, drain, audit, retention,
# and who owns each served name.
PRIVILEGED = ("submit", "register_pipeline", "pipelines", "pipeline_versions", "pipeline_runs", "run_pipeline",
              "rerun", "put_schedule", "schedules", "pause_schedule",
              "backfill", "backfill_status", "backfills", "cancel_backfill",
              "served_names", "claim_served", "update_served", "release_served",
              "kill_switch", "audit", "drain", "queues", "metrics_text", "kept", "workers", "sweep",
              "status", "wait", "cancel", "result_ref", "logs", "artifact", "artifacts", "graph", "lineage", "list")


def _privileged(name: str) -> Callable[..., Any]:
    def method(self: RegistryFace, cap: str, *args: Any, **kwargs: Any) -> Any:
        check(self._cap, cap, f"the registry's {name}")
        return getattr(self._registry, name)(*args, **kwargs)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"`Registry.{name}`, for a caller holding the control capability."
    return method


class RegistryFace:
    def __init__(self, home: str, check_feasibility: bool = True) -> None:
        self._registry = Registry(home, check_feasibility)
        collect_rarely()  # after the registry's own state is built (fabric/actors/heap.py)
        self._key = self._registry.key
        self._cap = control_cap(self._key)

    def ping(self) -> str:
        return "ok"

    def pid(self) -> int:
        return self._registry.pid()

    def home_dir(self) -> str:
        return self._registry.home_dir()

    def prove(self, nonce: str) -> str:
        """The answer to a driver's challenge: this actor holds the key the driver reads on the head."""
        return proof(self._key, REGISTRY_NAME, nonce)

    # -- an attempt's own calls: its grant is bound to (submission, node, attempt) ---------------------

    def report_progress(self, submission_id: str, node_id: str, attempt: int, grant: str, fraction: float,
                        message: str) -> None:
        check(attempt_grant(self._key, submission_id, node_id, attempt), grant, "report_progress")
        self._registry.report_progress(submission_id, node_id, attempt, fraction, message)

    def is_stopping(self, submission_id: str, node_id: str, attempt: int, grant: str) -> bool:
        check(attempt_grant(self._key, submission_id, node_id, attempt), grant, "is_stopping")
        return self._registry.is_stopping(submission_id, node_id, attempt)

    def is_cancelled(self, submission_id: str, node_id: str, attempt: int, grant: str) -> bool:
        check(attempt_grant(self._key, submission_id, node_id, attempt), grant, "is_cancelled")
        return self._registry.is_cancelled(submission_id)

    def chain_report(self, submission_id: str, node_id: str, attempt: int, grant: str, items: bytes) -> None:
        """A fused task's members done (execute/chain.py), signed by its chain head's attempt."""
        check(attempt_grant(self._key, submission_id, node_id, attempt), grant, "chain_report")
        self._registry.chain_report(submission_id, items)

    def audit_attempt(self, submission_id: str, node_id: str, attempt: int, grant: str, name: str, source: str,
                      target: str, reason: str) -> None:
        """A promote node's gate or traffic step, under `_promote:<name>`, signed by the attempt that made it."""
        check(attempt_grant(self._key, submission_id, node_id, attempt), grant, "audit_attempt")
        self._registry.audit(f"{PROMOTE_SUBJECT}{name}", source, target, reason,
                             f"{submission_id}/{node_id}#{attempt}")


for _name in PRIVILEGED:
    setattr(RegistryFace, _name, _privileged(_name))

RegistryActor: Any = ray.remote(sealed(RegistryFace))


def get_or_create_registry(home: str) -> Any:
    return RegistryActor.options(
        name=REGISTRY_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_concurrency=32, max_restarts=-1,
        # On the head, where FABRIC_HOME's disk is (cluster.yaml, k8s/): never on a spot worker that may vanish.
        resources={HEAD_RESOURCE: 0.001},
        # The outputs of failed and withdrawn attempts are dropped unread on purpose: no "unhandled error".
        runtime_env={"env_vars": {"RAY_IGNORE_UNHANDLED_ERRORS": "1"}},
    ).remote(home)


def open_registry(home: str, key_file: str) -> tuple[Any, str]:
    """The registry under fabric's name (started if none is), checked to hold this process's control key
    (CONTROL_IMPOSTOR otherwise, before it is told anything), and the capability to show it."""
    key = load_or_create_key(Path(key_file))
    handle = get_or_create_registry(home)
    return verified(handle, key, REGISTRY_NAME), control_cap(key)


__all__ = ["PRIVILEGED", "RegistryActor", "RegistryFace", "get_or_create_registry", "open_registry"]
