"""The one wrapper over Ray for node work: submit an attempt, watch it, cancel it, size the cluster."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayTaskError, TaskCancelledError

from fabric.errors import ErrorCode, Problem
from fabric.execute.worker import NodeFailure, run_node
from fabric.kinds import NodeCall
from fabric.plan import ExecutionPlan, ResourceUnit
from fabric.types import AttemptReport, ErrorInfo


@dataclass
class AttemptHandle:
    """The Ray side of one dispatch: the report ref and one ref per result slot."""

    report: ray.ObjectRef
    values: dict[str, ray.ObjectRef]


class RayBackend:
    """Turns node attempts into Ray tasks. Retries are the fabric's (with backoff), so Ray's are off."""

    def __init__(self) -> None:
        self._remote = ray.remote(run_node)
        self._options: dict[tuple[Any, ...], dict[str, Any]] = {}

    def submit(self, call: NodeCall, unit: ResourceUnit, inputs: Sequence[ray.ObjectRef],
               runtime_env: dict[str, Any] | None, on_done: Callable[[], None]) -> AttemptHandle:
        slots = call.result_slots
        env_key = repr(sorted(runtime_env.items())) if runtime_env else ""
        key = (unit.key(), len(slots), env_key)
        options = self._options.get(key)
        if options is None:
            options = {
                "num_cpus": unit.num_cpus, "num_gpus": unit.num_gpus, "num_returns": 1 + len(slots),
                "max_retries": 0, "retry_exceptions": False,
            }
            if unit.memory:
                options["memory"] = unit.memory
            if unit.custom:
                options["resources"] = dict(unit.custom)
            if runtime_env:
                options["runtime_env"] = runtime_env
            self._options[key] = options
        remote = self._remote.options(**options, name=f"{call.pipeline_id}.{call.node_id}")
        refs = remote.remote(call, *inputs)
        report_ref, *value_refs = refs
        report_ref.future().add_done_callback(lambda _future: on_done())
        return AttemptHandle(report_ref, dict(zip(slots, value_refs, strict=True)))

    @staticmethod
    def outcome(handle: AttemptHandle) -> tuple[AttemptReport, ErrorInfo | None]:
        """The finished attempt's report, and its error if it failed (never raises)."""
        try:
            return ray.get(handle.report), None
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, NodeFailure):
                return cause.report, cause.error
            return AttemptReport(), ErrorInfo(type(cause or exc).__name__, str(cause or exc)[-2000:])
        except TaskCancelledError as exc:
            return AttemptReport(), ErrorInfo("Cancelled", str(exc)[-500:])
        except Exception as exc:  # noqa: BLE001 - worker crashes, node deaths, lost objects
            return AttemptReport(), ErrorInfo(type(exc).__name__, str(exc)[-2000:])

    @staticmethod
    def cancel(handle: AttemptHandle, force: bool) -> None:
        try:
            ray.cancel(handle.report, force=force, recursive=True)
        except Exception:  # noqa: BLE001 - already finished or its owner is gone
            pass

    @staticmethod
    def feasibility_problems(plan: ExecutionPlan) -> list[Problem]:
        """Nodes that no alive Ray node could ever hold: Ray would leave them pending forever."""
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
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
                "lower the node's resources, or connect to a cluster (or autoscaler) with such nodes"))
        return problems


def _fmt(resources: dict[str, float]) -> str:
    parts = []
    for key, value in resources.items():
        if value <= 0:
            continue
        parts.append(f"{key}={value / 2**30:.1f}Gi" if key == "memory" else f"{key}={value:g}")
    return ", ".join(parts) or "nothing"
