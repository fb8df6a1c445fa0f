"""The one wrapper over Ray for node work: submit an attempt, watch it, cancel it, size the cluster."""

from __future__ import annotations

import pickle
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import ray
from ray.exceptions import RaySystemError, RayTaskError, TaskCancelledError, UnserializableException
from ray.util.placement_group import NODE_ID_LABEL_KEY as NODE_ID_LABEL
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from fabric.errors import ErrorCode, Problem
from fabric.execute.chain import ChainCall, run_pickled_chain
from fabric.execute.outputs import decode_outputs, load_outputs, read_output_files
from fabric.execute.pinning import is_plain, pinned_node, tenant_custom
from fabric.execute.ports import AttemptHandle, Outcome
from fabric.execute.sink import HEAD_RESOURCE, start_head_sink
from fabric.execute.untrusted import ReportInvalid, UnsafePayload, decode_outcomes, decode_report, refused
from fabric.execute.worker import NodeFailure, run_pickled_node
from fabric.kinds import NodeCall
from fabric.plan import ExecutionPlan, ResourceUnit
from fabric.schedule.admission import Placement
from fabric.types import AttemptReport, ErrorInfo

# Kinds that start their own Ray workers (Ray Train, Tune) with the node's resources: their driver task
# asks for almost nothing, or it would hold what its own workers need.
SELF_PLACING_KINDS = frozenset({"train", "ray_job", "tune", "llm_generate", "finetune"})
GPU_LOOKUP_EVERY_S = 5.0
HEAD_LOOKUP_EVERY_S = 5.0


def head_to_avoid(nodes: Sequence[Mapping[str, Any]]) -> str | None:
    """The head's node id while another node is alive: tenant work never runs beside the control plane's disk
    (its store, tokens and control key). None on a one-node cluster, where there is nowhere else (security.md)."""
    alive = [n for n in nodes if n.get("Alive")]
    heads = [n["NodeID"] for n in alive if HEAD_RESOURCE in n.get("Resources", {})]
    return heads[0] if heads and len(alive) > len(heads) else None


_cluster_seen: tuple[float, str | None, bool, tuple[Mapping[str, float], ...]] = (
    -HEAD_LOOKUP_EVERY_S, None, False, ())  # when, head to avoid, plain, what each node tenant work may use holds


def _cluster_now(fresh: bool = False) -> tuple[float, str | None, bool, tuple[Mapping[str, float], ...]]:
    """One `ray.nodes()` at most every HEAD_LOOKUP_EVERY_S (or now, when `fresh`), for everything read from it."""
    global _cluster_seen
    if fresh or time.monotonic() - _cluster_seen[0] > HEAD_LOOKUP_EVERY_S:
        nodes = ray.nodes()
        head = head_to_avoid(nodes)
        capacities = tuple(n["Resources"] for n in nodes if n.get("Alive") and n["NodeID"] != head)
        _cluster_seen = (time.monotonic(), head, is_plain(nodes), capacities)
    return _cluster_seen


def current_head_to_avoid() -> str | None:
    """`head_to_avoid` of the cluster now, looked up at most every HEAD_LOOKUP_EVERY_S."""
    return _cluster_now()[1]


def current_cluster_is_plain() -> bool:
    """Whether admission's placement of CPU work may be left to Ray (pinning.pinned_node), as of the same look."""
    return _cluster_now()[2]


def off_head(options: dict[str, Any]) -> dict[str, Any]:
    """`options` of a task that opens or runs what a tenant made, kept off the head while another node is alive."""
    head = current_head_to_avoid()
    return {**options, "label_selector": {NODE_ID_LABEL: f"!{head}"}} if head is not None else options


MAX_CACHED_OPTIONS = 4096  # `.options()` results kept (per pipeline, shape and, when pinned, node)


class RayBackend:
    """Turns node attempts into Ray tasks. Retries are the fabric's (with backoff), so Ray's are off."""

    def __init__(self, head_sink: tuple[str, str, str] | None = None) -> None:
        """`head_sink`: (home, artifacts, namespace) of the sink to start now if the cluster already has nodes
        besides the head (execute/sink.py: nodes there write through it, and must not wait for it)."""
        if head_sink is not None and ray.is_initialized() and head_to_avoid(ray.nodes()) is not None:
            start_head_sink(*head_sink)
        self._remote = ray.remote(run_pickled_node)
        self._chain = ray.remote(run_pickled_chain)
        self._loader = ray.remote(load_outputs)
        self._reader = ray.remote(read_output_files).options(num_cpus=0, max_retries=3,
                                                              resources={HEAD_RESOURCE: 0.001})
        self._decoder = ray.remote(decode_outputs)
        self._options: dict[tuple[Any, ...], tuple[dict[str, Any], Any]] = {}
        self._has_gpus: tuple[float, bool] = (-GPU_LOOKUP_EVERY_S, False)
        self._groups_to_remove: queue.SimpleQueue[Any] | None = None

    def submit(self, call: NodeCall, unit: ResourceUnit, inputs: Sequence[ray.ObjectRef],
               runtime_env: dict[str, Any] | None, placement: Placement | None,
               on_done: Callable[[Outcome], None]) -> AttemptHandle:
        """Start one attempt (where the scheduler placed it, if it did); `on_done(outcome)` is called
        from a Ray thread when it ends."""
        if unit.fallback_cpus is not None:  # GPU first: say which it got, and take CPUs when told to
            on_cpu = placement.cpu_fallback if placement is not None else not self._cluster_has_gpus()
            call = replace(call, device="cpu" if on_cpu else "gpu")
            if on_cpu:
                unit = replace(unit, num_cpus=unit.fallback_cpus, num_gpus=0.0, fallback_cpus=None, placement=None,
                               custom={k: v for k, v in unit.custom.items() if k != "gpu_mem_gb"})
        if any(name.startswith("node:") for name in unit.custom):  # Ray's placement keys are fabric's to set
            unit = replace(unit, custom=tenant_custom(unit.custom))
        slots = call.result_slots
        env_key = repr(sorted(runtime_env.items())) if runtime_env else ""
        head = self._head_to_avoid()
        if head is not None and call.control is not None:  # nodes elsewhere write through the head's sink
            start_head_sink(call.home, call.artifacts, call.control[1])
        key = (call.pipeline_id, call.kind in SELF_PLACING_KINDS, unit.key(), len(slots), env_key, head)
        cached = self._options.get(key)
        if cached is None:
            options: dict[str, Any] = {
                "num_cpus": unit.num_cpus, "num_gpus": unit.num_gpus, "num_returns": 1 + len(slots),
                "max_retries": 0, "retry_exceptions": False, "name": call.pipeline_id,
            }
            if unit.memory:
                options["memory"] = unit.memory
            if unit.custom:
                options["resources"] = dict(unit.custom)
            if call.kind in SELF_PLACING_KINDS:
                options.update(num_cpus=0, num_gpus=0, resources=_pool_only(unit.custom))
                options.pop("memory", None)
            if runtime_env:
                options["runtime_env"] = runtime_env
            if head is not None:  # never on the head while there is another node (docs/security.md)
                options["label_selector"] = {NODE_ID_LABEL: f"!{head}"}
            # Options are built once per shape: `.options()` costs ~30 us, a lot per node. Tasks are
            # named after their pipeline; the node is in the fabric's own status.
            cached = self._options[key] = (options, self._remote.options(**options))
        options, remote = cached
        on_node = pinned_node(placement, unit, placement is not None and current_cluster_is_plain())
        strategy = None if call.kind in SELF_PLACING_KINDS else unit.group_strategy
        if strategy is not None:  # gang-scheduled: every worker's bundle or none; the node runs in bundle 0
            # Packed work goes where admission booked it, as a hard rule: a soft target lands elsewhere
            # while an earlier group is still being removed, and then the book and Ray disagree.
            pinned = on_node is not None and strategy in ("PACK", "STRICT_PACK")
            where = {NODE_ID_LABEL: on_node} if pinned else {NODE_ID_LABEL: f"!{head}"} if head else None
            group = placement_group([_bundle(unit)] * unit.workers, strategy=strategy,
                                    bundle_label_selector=[where] * unit.workers if where else None)
            in_group = {k: v for k, v in options.items() if k != "label_selector"}  # the bundles say where
            remote = self._remote.options(**in_group, scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=0))
            on_done = self._removing(group, on_done)
        elif on_node is not None:  # where the admission policy packed it: soft, so a node that died (the cluster
            # view admission placed by is seconds old) sends it elsewhere instead of failing it; a live node holds it
            pinned_key = (*key, on_node)  # admission places most nodes: `.options()` once per shape and node
            if (affine := self._options.get(pinned_key)) is None:
                if len(self._options) >= MAX_CACHED_OPTIONS:  # many pipelines on many nodes: start again
                    self._options.clear()
                affine = self._options[pinned_key] = (options, self._remote.options(
                    **options, scheduling_strategy=NodeAffinitySchedulingStrategy(on_node, soft=True)))
            remote = affine[1]
        # A NodeCall travels pre-pickled: Ray's generic path costs ~60 us for a dataclass, bytes ~3 us.
        # Secret values go beside the call, as their own small inline argument, and only to this attempt.
        sealed = b""
        if call.secret_values:
            sealed = pickle.dumps({k: dict(v) for k, v in call.secret_values.items()}, protocol=5)
            call = replace(call, secret_values={})
        report_ref, *value_refs = remote.remote(pickle.dumps(call, protocol=5), sealed, *inputs)
        # `_on_completed` hands us the deserialized report (or the error) in one step; the public
        # `future()` + `ray.get` pair costs twice as much per node.
        report_ref._on_completed(lambda result: on_done(outcome(result)))
        return AttemptHandle(report_ref, dict(zip(slots, value_refs, strict=True)), call.attempt)

    def submit_chain(self, chain: ChainCall, unit: ResourceUnit, inputs: Sequence[ray.ObjectRef],
                     runtime_env: dict[str, Any] | None, placement: Placement | None,
                     on_done: Callable[[list[Outcome]], None]) -> list[AttemptHandle]:
        """Start a fused chain as one Ray task (plan/fuse.py: no GPU, no gang, no self-placing kind, so a plain
        task); `on_done(outcomes)`, one per member in order, is called from a Ray thread when it ends."""
        first = chain.members[0]
        env_key = repr(sorted(runtime_env.items())) if runtime_env else ""
        head = self._head_to_avoid()
        if head is not None and first.control is not None:
            start_head_sink(first.home, first.artifacts, first.control[1])
        key = ("chain", first.pipeline_id, unit.key(), chain.slots, env_key, head)
        cached = self._options.get(key)
        if cached is None:
            options: dict[str, Any] = {
                "num_cpus": unit.num_cpus, "num_gpus": 0, "num_returns": 1 + chain.slots,
                "max_retries": 0, "retry_exceptions": False, "name": first.pipeline_id,
            }
            if unit.memory:
                options["memory"] = unit.memory
            if tenant_custom(unit.custom):  # Ray's node:* placement keys are fabric's to set
                options["resources"] = tenant_custom(unit.custom)
            if runtime_env:
                options["runtime_env"] = runtime_env
            if head is not None:  # never on the head while there is another node (docs/security.md)
                options["label_selector"] = {NODE_ID_LABEL: f"!{head}"}
            cached = self._options[key] = (options, self._chain.options(**options))
        options, remote = cached
        plain = placement is not None and current_cluster_is_plain()
        if (on_node := pinned_node(placement, unit, plain)) is not None:  # where admission packed the chain's head
            remote = self._chain.options(
                **options, scheduling_strategy=NodeAffinitySchedulingStrategy(on_node, soft=True))
        # As for one node: the secret values (one submission's, the same for every member) go beside the call.
        secrets = first.secret_values
        sealed = pickle.dumps({k: dict(v) for k, v in secrets.items()}, protocol=5) if secrets else b""
        if secrets:
            chain = replace(chain, members=tuple(replace(call, secret_values={}) for call in chain.members))
        report_ref, *value_refs = remote.remote(pickle.dumps(chain, protocol=5), sealed, *inputs)
        members = len(chain.members)
        report_ref._on_completed(lambda result: on_done(chain_outcomes(result, members)))
        handles, at = [], 0
        for call in chain.members:
            slots = call.result_slots
            handles.append(AttemptHandle(report_ref, dict(zip(slots, value_refs[at:at + len(slots)], strict=True)),
                                         call.attempt))
            at += len(slots)
        return handles

    def _removing(self, group: Any, on_done: Callable[[Outcome], None]) -> Callable[[Outcome], None]:
        """`on_done`, and the attempt's placement group given back. Not in the completion callback itself:
        that runs on Ray's own thread, and a blocking call to the GCS there deadlocks the process."""
        if self._groups_to_remove is None:
            self._groups_to_remove = queue.SimpleQueue()
            threading.Thread(target=_remove_groups, args=(self._groups_to_remove,), daemon=True,
                             name="fabric-pg-reaper").start()
        removals = self._groups_to_remove

        def done(result: Outcome) -> None:
            removals.put(group)
            on_done(result)
        return done

    @staticmethod
    def _head_to_avoid() -> str | None:
        return current_head_to_avoid()

    def _cluster_has_gpus(self) -> bool:
        """Without admission, GPU-first work falls back at once where the cluster has no GPU at all."""
        checked_at, has = self._has_gpus
        if time.monotonic() - checked_at > GPU_LOOKUP_EVERY_S:
            has = ray.cluster_resources().get("GPU", 0.0) > 0
            self._has_gpus = (time.monotonic(), has)
        return has

    def load(self, root: str, submission_id: str, node_id: str, outs: Sequence[str]) -> dict[str, ray.ObjectRef]:
        """ObjectRefs of a finished node's persisted outputs, read by small tasks near the data rather than
        through the registry. A local root is the head's disk: a task there reads its bytes, unopened, and
        another task off the head unpickles them (a node's values are its code's pickles, and the head holds the
        control key: docs/security.md). A URI is read and opened off the head in one task."""
        names = list(outs)
        options = off_head({"num_cpus": 0, "max_retries": 3, "num_returns": len(names)})
        if "://" in root:
            refs: Any = self._loader.options(**options).remote(root, submission_id, node_id, names)
        else:
            files = self._reader.remote(root, submission_id, node_id, names)
            refs = self._decoder.options(**options).remote(files, names)
        return dict(zip(names, [refs] if len(names) == 1 else refs, strict=True))  # one ref, or num_returns

    @staticmethod
    def cancel(handle: AttemptHandle, force: bool) -> None:
        if handle.report is None:
            return
        try:
            ray.cancel(handle.report, force=force, recursive=True)
        except Exception:  # noqa: BLE001 - already finished or its owner is gone
            pass

    @staticmethod
    def workers() -> list[dict[str, Any]]:
        """Every Ray node as the old worker registries showed it: resources, pools, load, busy or idle."""
        from ray._private import state  # the only per-node availability without the dashboard

        available = state.available_resources_per_node()
        workers = []
        for node in ray.nodes():
            total = {k: v for k, v in node["Resources"].items() if not k.startswith("node:")}
            free = available.get(node["NodeID"], {}) if node.get("Alive") else {}
            used = {k: round(v - free.get(k, 0.0), 3) for k, v in total.items()
                    if k not in ("memory", "object_store_memory") and v - free.get(k, 0.0) > 1e-9}
            cpus = total.get("CPU", 0.0)
            workers.append({
                "node_id": node["NodeID"], "address": node.get("NodeManagerAddress"), "alive": bool(node.get("Alive")),
                "resources": total, "used": used,
                "pools": sorted({k.split(":", 1)[1] for k in total if k.startswith("pool:")}
                                | {v for k, v in node.get("Labels", {}).items() if k == "fabric.io/pool"}),
                "load": round(used.get("CPU", 0.0) / cpus, 3) if cpus else 0.0,
                "state": "dead" if not node.get("Alive") else ("busy" if used else "idle"),
            })
        return workers

    @staticmethod
    def feasibility_problems(plan: ExecutionPlan) -> list[Problem]:
        """Nodes that no alive Ray node could ever hold: Ray would leave them pending forever. Checked against the
        cluster as last looked up (a submit costs no GCS call), and against a fresh look before refusing, so a node
        that just joined counts."""
        return _infeasible(plan, _cluster_now()[3]) and _infeasible(plan, _cluster_now(fresh=True)[3])


def _infeasible(plan: ExecutionPlan, nodes: Sequence[Mapping[str, float]]) -> list[Problem]:
    problems = []
    for node_id in plan.order:
        unit = plan.nodes[node_id].unit
        need = {"CPU": unit.num_cpus, "GPU": unit.num_gpus, **unit.custom}
        if unit.memory:
            need["memory"] = float(unit.memory)
        if any(all(have.get(k, 0.0) >= v for k, v in need.items() if v > 0) for have in nodes):
            continue
        largest = {k: max((h.get(k, 0.0) for h in nodes), default=0.0) for k, v in need.items() if v > 0}
        problems.append(Problem(
            ErrorCode.RESOURCES_INFEASIBLE, f"nodes[{node_id}].resources",
            f"node {node_id!r} needs {_fmt(need)} but the largest Ray node offers {_fmt(largest)}",
            "lower the node's resources or connect to a cluster with such nodes; where an autoscaler will add "
            "them, start the registry with FABRIC_SKIP_FEASIBILITY=1"))
    return problems


def node_runtime_env(base: dict[str, Any] | None, env: Mapping[str, str], image: str | None = None
                     ) -> dict[str, Any] | None:
    """The submission's runtime_env plus the node's env vars and, where the cluster opted in, its image."""
    if not env and not image:
        return base or None
    merged = dict(base or {})
    if env:
        merged["env_vars"] = {**merged.get("env_vars", {}), **env}
    if image:
        merged["image_uri"] = image  # Ray runs the worker in this container (needs podman on the nodes)
    return merged


def outcome(result: Any) -> Outcome:
    """An attempt's report, and its error if it failed, from what Ray completed its report ref with: plain data
    only (execute/untrusted.py); anything else the worker sent fails the attempt as UNSAFE_PAYLOAD."""
    if isinstance(result, bytes):
        try:
            return decode_report(result), None
        except ReportInvalid as exc:
            return refused(str(exc))
    unsafe = unsafe_cause(result)
    if unsafe is not None:
        return refused(unsafe)
    if isinstance(result, RayTaskError):
        cause = result.cause
        if isinstance(cause, NodeFailure):
            return cause.report, cause.error
        return AttemptReport(), ErrorInfo(type(cause or result).__name__, str(cause or result)[-2000:])
    if isinstance(result, TaskCancelledError):
        return AttemptReport(), ErrorInfo("Cancelled", str(result)[-500:])
    if isinstance(result, BaseException):  # worker crashes, node deaths, lost objects
        return AttemptReport(), ErrorInfo(type(result).__name__, str(result)[-2000:])
    return AttemptReport(), ErrorInfo("UnexpectedReport", f"worker returned {type(result).__name__}")


def chain_outcomes(result: Any, members: int) -> list[Outcome]:
    """Each member's outcome from what a fused task's report ref completed with; an error of the task itself
    (cancelled, its worker lost) is every member's."""
    if isinstance(result, bytes):
        try:
            return decode_outcomes(result, members)
        except ReportInvalid as exc:
            return [refused(str(exc))] * members
    return [outcome(result)] * members


def unsafe_cause(result: Any) -> str | None:
    """Why the registry's unpickler refused what a task sent (execute/untrusted.py), or None: Ray hands a refused
    result over as a RaySystemError, and a refused task error as an UnserializableException."""
    if isinstance(result, RaySystemError) and isinstance(getattr(result, "client_exc", None), UnsafePayload):
        return str(result.client_exc)
    if isinstance(result, UnserializableException):
        return ("its error could not be opened by the registry (a class the control plane does not unpickle); "
                f"as the worker printed it: {str(result)[-1500:]}")
    if not isinstance(result, bytes | BaseException):
        return f"the worker returned a {type(result).__name__}, not a report"
    return None


def _bundle(unit: ResourceUnit) -> dict[str, float]:
    bundle = {"CPU": unit.num_cpus, "GPU": unit.num_gpus, **unit.custom}
    if unit.memory:
        bundle["memory"] = float(unit.memory)
    return {key: value for key, value in bundle.items() if value > 0} or {"CPU": 0.001}


def _remove_groups(groups: queue.SimpleQueue[Any]) -> None:
    while True:
        group = groups.get()
        try:
            remove_placement_group(group)  # the attempt is over: its workers' bundles go back
        except Exception:  # noqa: BLE001 - already gone with its job, or Ray is shutting down
            pass


def _pool_only(custom: Mapping[str, float]) -> dict[str, float]:
    return {key: value for key, value in custom.items() if key.startswith("pool:")}


def _fmt(resources: dict[str, float]) -> str:
    parts = []
    for key, value in resources.items():
        if value <= 0:
            continue
        parts.append(f"{key}={value / 2**30:.1f}Gi" if key == "memory" else f"{key}={value:g}")
    return ", ".join(parts) or "nothing"
