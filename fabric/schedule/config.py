"""The scheduling config: `default_scheduling.yaml` beside this module, with `$FABRIC_HOME/scheduling.yaml` (or
`$FABRIC_SCHEDULING`) read over it when it exists (docs/scheduling.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fabric.errors import ErrorCode, FabricError
from fabric.schedule.admission import PoolLimit
from fabric.schedule.quota import Budget
from fabric.spec import Priority


@dataclass(frozen=True)
class Rate:
    """What an hour of one CPU and of one GPU costs in a pool (any currency; the old workers sent theirs)."""

    cpu_hour: float = 0.0
    gpu_hour: float = 0.0

    def cost(self, cpu: float, gpu: float, seconds: float) -> float:
        return (cpu * self.cpu_hour + gpu * self.gpu_hour) * max(seconds, 0.0) / 3600


@dataclass(frozen=True)
class SchedulingConfig:
    aging_s: float = 1800.0
    default_estimate_s: float = 3600.0
    pools: dict[str, PoolLimit] | None = None
    quotas: dict[str, Budget] | None = None
    preempt_after_s: float = 300.0  # a high or critical node waiting this long may preempt
    preemptible: tuple[Priority, ...] = (Priority.LOW, Priority.NORMAL)  # whose spot_ok work may be preempted
    gpu_fallback_after_s: float = 300.0  # GPU-first nodes with a CPU fallback wait this long for a GPU
    cost: Rate = Rate()  # outside any pool
    pool_costs: dict[str, Rate] | None = None
    families: frozenset[str] = frozenset()  # pools that node types advertise beside their own (queue families)
    default_quota: Budget | None = None  # the budget of every team without an entry in `quotas`
    eager_depth: int | None = None  # work released to Ray ahead of free capacity (None: the cluster's CPUs)


DEFAULT_CONFIG = Path(__file__).with_name("default_scheduling.yaml")
_MERGED = ("pools", "quotas")  # merged by name over the defaults; every other key replaces


def load_config(path: Path, admission: bool = True) -> SchedulingConfig | None:
    """The default scheduling config, with the file at `path` (FABRIC_SCHEDULING) read over it when it exists;
    None when `admission` (FABRIC_ADMISSION, on by default) is off, file or not: ready nodes go to Ray at once."""
    if not admission:
        return None
    raw = _read(DEFAULT_CONFIG)
    try:
        if path.exists():
            for key, value in _read(path).items():
                raw[key] = {**(raw.get(key) or {}), **(value or {})} if key in _MERGED else value
        return config_of(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise FabricError(f"the scheduling config {path} is invalid: {exc}", code=ErrorCode.SPEC_FIELD,
                          where=str(path), fix="see the format in docs/scheduling.md") from exc


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FabricError(f"the scheduling config {path} is invalid: {exc}", code=ErrorCode.SPEC_FIELD,
                          where=str(path), fix="see the format in docs/scheduling.md") from exc
    if not isinstance(raw, dict):
        raise FabricError(f"the scheduling config {path} is not a mapping", code=ErrorCode.SPEC_FIELD,
                          where=str(path), fix="see the format in docs/scheduling.md")
    return raw


def config_of(raw: dict[str, Any]) -> SchedulingConfig:
    pools = {name: spec or {} for name, spec in (raw.get("pools") or {}).items()}
    default_quota = raw.get("default_quota")
    depth = raw.get("eager_depth")
    return SchedulingConfig(
        aging_s=float(raw.get("aging_s", 1800.0)),
        default_estimate_s=float(raw.get("default_estimate_s", 3600.0)),
        preempt_after_s=float(raw.get("preempt_after_s", 300.0)),
        preemptible=tuple(Priority(p) for p in raw.get("preemptible", ("low", "normal"))),
        gpu_fallback_after_s=float(raw.get("gpu_fallback_after_s", 300.0)),
        pools={name: PoolLimit(int(spec["max_concurrency"])) for name, spec in pools.items()
               if spec.get("max_concurrency") is not None},
        cost=Rate(**raw.get("cost", {})),
        pool_costs={name: Rate(**spec["cost"]) for name, spec in pools.items() if "cost" in spec},
        quotas={team: Budget(**spec) for team, spec in (raw.get("quotas") or {}).items()},
        families=frozenset(name for name, spec in pools.items() if spec.get("runs_on")),
        default_quota=Budget(**default_quota) if default_quota else None,
        eager_depth=int(depth) if depth is not None else None)


__all__ = ["DEFAULT_CONFIG", "Rate", "SchedulingConfig", "config_of", "load_config"]
