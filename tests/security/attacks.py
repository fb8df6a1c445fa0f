"""What tenant code can try against the control plane from inside a Ray task (entrypoints `tests.security.attacks:*`).

Each attack returns what happened instead of raising, so that one node reports every attempt at once."""

from __future__ import annotations

import gc
from typing import Any

NAMESPACE = "fabric"
REGISTRY = "fabric-registry"


def _outcome(fn: Any) -> str:
    import ray

    try:
        value = fn()
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        return f"refused: {getattr(cause, 'code', type(cause).__name__)}"
    except Exception as exc:  # noqa: BLE001 - every way an attack fails is an answer
        return f"refused: {type(exc).__name__}: {exc}"[:300]
    return f"ok: {value!r}"[:300]


def own_grant() -> str:
    """The grant of the attempt running here, dug out of the worker's memory as tenant code could."""
    from fabric.context import context
    from fabric.plan.call import NodeCall

    me = context()
    for obj in gc.get_objects():
        if isinstance(obj, NodeCall) and obj.submission_id == me.submission_id and obj.node_id == me.node_id:
            return obj.grant
    return ""


def hit_registry(victim: str, victim_node: str, quota_team: str = "", sink: str = "") -> dict[str, str]:
    """Every privileged call a tenant would like to make, with no capability, a guessed one and its own grant."""
    import ray

    from fabric.context import context

    me = context()
    grant = own_grant()
    registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
    spec = {"version": 1, "pipeline_id": "forged", "nodes": [{"id": "a", "kind": "python_task",
                                                               "entrypoint": "tests.nodes:value"}]}
    tries: dict[str, Any] = {
        "submit": lambda: registry.submit.remote(spec, {"team": "victims"}),
        "submit_with_grant": lambda: registry.submit.remote(grant, spec, {"team": "victims"}),
        "cancel": lambda: registry.cancel.remote("", victim),
        "cancel_with_grant": lambda: registry.cancel.remote(grant, victim),
        "kill_switch": lambda: registry.kill_switch.remote("x" * 64, True, "pwned", "tenant"),
        "list": lambda: registry.list.remote(None, None, 50),
        "status": lambda: registry.status.remote("", victim),
        "drain": lambda: registry.drain.remote("", 0.0, "tenant"),
        "audit": lambda: registry.audit.remote("", "_promote:x", "a", "b", "forged"),
        # What the registry observes (lineage, the DAG view, metrics) is the capability holders' too.
        "graph": lambda: registry.graph.remote("", victim),
        "lineage": lambda: registry.lineage.remote(grant, victim),
        "metrics": lambda: registry.metrics_text.remote(""),
        # A function travels pickled by value, and the registry builds no function from a tenant's bytes ...
        "ray_call": lambda: registry.__ray_call__.remote(lambda self: self._cap),
        # ... and one it does build (a builtin type) is refused by the sealed actor itself.
        "ray_call_builtin": lambda: registry.__ray_call__.remote(frozenset),
        "progress_other": lambda: registry.report_progress.remote(victim, victim_node, 1, grant, 0.99, "forged"),
        "stopping_other": lambda: registry.is_stopping.remote(victim, victim_node, 1, grant),
        "cancelled_other": lambda: registry.is_cancelled.remote(victim, victim_node, 1, grant),
        "audit_other": lambda: registry.audit_attempt.remote(victim, victim_node, 1, grant, "x", "a", "b", "forged"),
        "progress_own": lambda: registry.report_progress.remote(me.submission_id, me.node_id, me.attempt, grant,
                                                                0.5, "my own progress"),
    }
    if quota_team:
        quota = ray.get_actor(f"fabric-quota:{quota_team}", namespace=NAMESPACE)
        tries["quota_release"] = lambda: quota.release.remote("", ["anything"], 0.0)
        tries["quota_sync"] = lambda: quota.sync.remote("", {"gpu": 1000}, {"day": "x", "running": {}}, 0.0)
        tries["quota_ray_call"] = lambda: quota.__ray_call__.remote(lambda self: self._cap)
    if sink:
        head_sink = ray.get_actor(sink, namespace=NAMESPACE)
        tries["sink_other_log"] = lambda: head_sink.append_log.remote(victim, victim_node, 1, grant, 0, b"forged\n")
        tries["sink_own_log"] = lambda: head_sink.append_log.remote(me.submission_id, me.node_id, me.attempt, grant,
                                                                     0, b"")
    return {name: _outcome(lambda make=make: ray.get(make(), timeout=30)) for name, make in tries.items()}


class Payload:
    """Unpickling it runs code: a file `pwned-<pid>` appears in `marker_dir`, named after the process that opened it."""

    def __init__(self, marker_dir: str) -> None:
        self.marker_dir = marker_dir

    def __reduce__(self) -> tuple[Any, ...]:
        code = f"import os; open(os.path.join({self.marker_dir!r}, 'pwned-%d' % os.getpid()), 'w').write('x')"
        return (exec, (code,))


class PayloadError(BaseException):
    """The payload as an error that escapes the worker's own handling (`except Exception`): Ray stores it pickled
    for the registry, which opens the task's error to learn why the attempt failed."""

    def __init__(self, marker_dir: str) -> None:
        super().__init__(marker_dir)
        self.marker_dir = marker_dir

    def __reduce__(self) -> tuple[Any, ...]:
        return Payload(self.marker_dir).__reduce__()


def evil_error(marker_dir: str) -> None:
    raise PayloadError(marker_dir)


def evil_report(marker_dir: str, raw: bool = False) -> int:
    """This worker's report replaced by the payload: as the object (Ray pickles it, the registry's Ray unpickles
    it) or, `raw`, as its pickle's bytes (what the registry once `pickle.loads`-ed as the report)."""
    import pickle

    import fabric.execute.worker as worker

    original, payload = worker.encode_report, Payload(marker_dir)

    def forged(report: Any) -> Any:
        worker.encode_report = original  # once: later tasks in this worker process report honestly
        return pickle.dumps(payload) if raw else payload

    worker.encode_report = forged
    return 1


def evil_calls(marker_dir: str, quota_team: str = "", sink: str = "") -> dict[str, str]:
    """The payload as an argument of control-plane calls (Ray unpickles arguments before a method checks its
    capability), and as the pickled items of its own chain report."""
    import pickle

    import ray

    from fabric.context import context

    me = context()
    grant = own_grant()
    payload = Payload(marker_dir)
    registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
    tries: dict[str, Any] = {
        "status_arg": lambda: registry.status.remote(payload, "x"),
        "progress_arg": lambda: registry.report_progress.remote(me.submission_id, me.node_id, me.attempt, grant,
                                                                payload, "m"),
        "chain_report_pickle": lambda: registry.chain_report.remote(
            me.submission_id, me.node_id, me.attempt, grant, pickle.dumps([(me.node_id, me.attempt, payload)])),
    }
    if quota_team:
        quota = ray.get_actor(f"fabric-quota:{quota_team}", namespace=NAMESPACE)
        tries["quota_arg"] = lambda: quota.release.remote(payload, ["x"], 0.0)
    if sink:
        head_sink = ray.get_actor(sink, namespace=NAMESPACE)
        tries["sink_arg"] = lambda: head_sink.append_log.remote(me.submission_id, me.node_id, me.attempt, grant, 0,
                                                                 payload)
    return {name: _outcome(lambda make=make: ray.get(make(), timeout=30)) for name, make in tries.items()}


class Impostor:
    """A detached actor a tenant starts under a fabric name: it answers like the real one, without the key."""

    def ping(self) -> str:
        return "ok"

    def home_dir(self) -> str:
        return "/tmp"

    def prove(self, *args: Any) -> str:
        return "0" * 64

    def submit(self, *args: Any) -> dict[str, Any]:
        return {"submission_id": "stolen", "created": True}


def squat_registry() -> str:
    """Kill the registry for good and take its name."""
    import ray

    ray.kill(ray.get_actor(REGISTRY, namespace=NAMESPACE), no_restart=True)
    for _ in range(100):
        try:
            impostor = ray.remote(Impostor).options(name=REGISTRY, namespace=NAMESPACE, lifetime="detached",
                                                    num_cpus=0).remote()
            ray.get(impostor.ping.remote(), timeout=30)
            return "squatted"
        except ValueError:  # the dead actor's name is not free yet
            import time

            time.sleep(0.1)
    return "could not squat"


def forge_served_claim(name: str, team: str) -> dict[str, str]:
    """Take a served name over for `team` the ways a tenant can reach: the GCS key-value key where claims were once
    kept (any Ray task may write it), and the registry's own claim methods without the control capability."""
    import json

    import ray
    from ray.experimental import internal_kv

    from fabric.spec.policy import ServedName

    registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
    forged = json.dumps({"owner": team, "cpus": 0.0, "replicas": 0}).encode()
    tries: dict[str, Any] = {
        "kv_put": lambda: internal_kv._internal_kv_put("served:" + name, forged, True, namespace=NAMESPACE),
        "claim": lambda: ray.get(registry.claim_served.remote("", name, ServedName(team)), timeout=30),
        "release": lambda: ray.get(registry.release_served.remote("", name, "a"), timeout=30),
        "read": lambda: ray.get(registry.served_names.remote("", None), timeout=30),
    }
    return {what: _outcome(make) for what, make in tries.items()}


def hit_gateway(marker_dir: str) -> dict[str, str]:
    """Run a function in the gateway's Serve replicas (they hold the control key) through Ray's built-in
    `__ray_call__`, and send one a pickle that runs code when opened (`payload_arg`: see docs/security.md)."""
    import os

    import ray
    from ray._private.state import actors

    # Ray's GCS actor table, which any driver can read (no dashboard needed); Serve's actors are in "serve".
    replicas = sorted(a["Name"] for a in actors(actor_state_name="ALIVE").values()
                      if "fabric-gateway" in a["ActorClassName"] and a["Name"])
    tries: dict[str, Any] = {"found": lambda: len(replicas)}
    for i, name in enumerate(replicas):
        handle = ray.get_actor(name, namespace="serve")
        tries[f"ray_call_builtin_{i}"] = lambda h=handle: ray.get(h.__ray_call__.remote(frozenset), timeout=30)
        tries[f"ray_call_fn_{i}"] = lambda h=handle: ray.get(h.__ray_call__.remote(lambda self: os.getpid()),
                                                             timeout=30)
        tries[f"payload_arg_{i}"] = lambda h=handle: ray.get(h.reconfigure.remote(Payload(marker_dir), None),
                                                             timeout=30)
    return {what: _outcome(make) for what, make in tries.items()}


class Nested:
    """Opened once (in a worker) it becomes a Payload, which runs code wherever it is opened next."""

    def __init__(self, marker_dir: str) -> None:
        self.marker_dir = marker_dir

    def __reduce__(self) -> tuple[Any, ...]:
        return (Payload, (self.marker_dir,))


def evil_value(marker_dir: str) -> Any:
    """A node value that runs code where it is opened: what a driver of another team must not unpickle."""
    return {"looks": "plain", "but": Nested(marker_dir)}
