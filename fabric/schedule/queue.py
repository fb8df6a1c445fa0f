"""The engine's admission queue, pure: the ready nodes of every run wait here, the policy decides what goes
and where, the team quota ledgers are charged, and what each attempt cost is worked out. The cluster, the
quota book, the journal of the day's use and the autoscaler hint are injected: `fabric.execute.scheduler`
passes Ray's (`ray.nodes()`, the quota actors, the store, `request_resources`).

On when `$FABRIC_HOME/scheduling.yaml` (or `$FABRIC_SCHEDULING`) exists, or with FABRIC_ADMISSION=1:

    aging_s: 1800                      # a priority step up per this many seconds waited
    default_estimate_s: 3600           # EASY backfill's run time for nodes with no max_runtime
    pools: {backtest: {max_concurrency: 20}, agents: {max_concurrency: 12}}
    quotas: {research: {cpu: 64, gpu: 8, gpu_hours_per_day: 24, burst_gpu: 2, burst_gpu_hours_per_day: 4}}
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from fabric.errors import ErrorCode, FabricError
from fabric.plan import NodePlan
from fabric.schedule.admission import (
    AdmissionPolicy,
    Cluster,
    Decision,
    Gpu,
    Node,
    Placement,
    PoolLimit,
    Request,
    Running,
    Waiting,
    choose_victims,
)
from fabric.schedule.quota import Budget, QuotaBook, QuotaLedger
from fabric.schedule.run import RunMachine, Transition
from fabric.spec import Priority
from fabric.states import NodeState, WaitReason

log = logging.getLogger(__name__)

CLUSTER_REFRESH_S = 2.0
JOURNAL_EVERY_S = 60.0


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


def load_config(path: Path, admission: bool = False) -> SchedulingConfig | None:
    """The scheduling config at `path` (FABRIC_SCHEDULING), the default one when there is no file and
    `admission` (FABRIC_ADMISSION) is on, else None: admission is off."""
    if not path.exists():
        return SchedulingConfig() if admission else None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return SchedulingConfig(
            aging_s=float(raw.get("aging_s", 1800.0)),
            default_estimate_s=float(raw.get("default_estimate_s", 3600.0)),
            preempt_after_s=float(raw.get("preempt_after_s", 300.0)),
            preemptible=tuple(Priority(p) for p in raw.get("preemptible", ("low", "normal"))),
            gpu_fallback_after_s=float(raw.get("gpu_fallback_after_s", 300.0)),
            pools={name: PoolLimit(int(spec["max_concurrency"])) for name, spec in (raw.get("pools") or {}).items()
                   if spec.get("max_concurrency") is not None},
            cost=Rate(**raw.get("cost", {})),
            pool_costs={name: Rate(**spec["cost"]) for name, spec in (raw.get("pools") or {}).items()
                        if "cost" in spec},
            quotas={team: Budget(**spec) for team, spec in (raw.get("quotas") or {}).items()})
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise FabricError(f"the scheduling config {path} is invalid: {exc}", code=ErrorCode.SPEC_FIELD,
                          where=str(path), fix="see the format in docs/scheduling.md") from exc


class QuotaJournal(Protocol):
    """Where each team's charged use of the day is kept across restarts (the engine's: the store)."""

    def load(self, team: str) -> dict[str, Any] | None: ...

    def save(self, team: str, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Charge:
    """What an ended attempt cost (recorded by the engine as an EventKind.COST row)."""

    node_id: str
    attempt: int
    at: float
    amount: float


Demand = Callable[[list[dict[str, float]]], None]  # held work as resource bundles, for an autoscaler


class AdmissionQueue:
    def __init__(self, config: SchedulingConfig, clock: Callable[[], float], *, nodes: Callable[[], list[Node]],
                 journal: QuotaJournal | None = None, quotas: Callable[..., QuotaBook] = QuotaBook,
                 demand: Demand | None = None) -> None:
        self.config = config
        self._policy = AdmissionPolicy(config.pools, config.aging_s)
        self._clock = clock
        self._list_nodes = nodes
        self._journal = journal
        self._tell_demand = demand
        # The engine passes the book kept in per-team quota actors (fabric/execute/quotas.py).
        self._quotas = quotas(config.quotas, clock, journal.load if journal is not None else None)
        self._booked: dict[str, tuple[Request, Placement, float]] = {}  # key -> request, placement, started_at
        self._nodes: list[Node] = []
        self._nodes_at = -math.inf
        self._demand: list[dict[str, float]] | None = None
        self.last: Decision | None = None
        self.queue: list[dict[str, Any]] = []  # the waiting nodes as of the last round, in queue order
        self._waiting_requests: dict[str, Request] = {}
        self._waits: dict[str, WaitReason] = {}  # key -> why it waits, as of the last round
        self._saved_at: dict[str, float] = {}

    def request(self, key: str, plan: NodePlan, team: str | None, queued_at: float | None) -> Request:
        unit = plan.unit
        gpus = max(unit.num_gpus, 1.0)
        preemptible = plan.qos == "spot_ok" and plan.priority in self.config.preemptible
        # Resources are per worker: a multi-worker node is booked whole (on one node: conservative for SPREAD).
        return Request(key, team or "-", plan.priority, queued_at or self._clock(), unit.num_cpus * unit.workers,
                       unit.num_gpus * unit.workers,
                       float(unit.custom.get("gpu_mem_gb", 0.0)) / gpus, plan.pool,
                       plan.max_runtime or self.config.default_estimate_s, preemptible, plan.qos == "spot_ok",
                       unit.fallback_cpus * unit.workers if unit.fallback_cpus is not None else None,
                       unit.fallback_after_s if unit.fallback_after_s is not None
                       else self.config.gpu_fallback_after_s)

    def admit(self, runs: Iterable[tuple[str, RunMachine, str | None]]) -> list[tuple[str, str, Placement]]:
        """One round over every run's waiting nodes: (submission, node, placement) to release now. The
        others are told why they wait and where they are in the queue (shown in their status)."""
        queue, where = [], {}
        for submission_id, machine, team in runs:
            for node_id in machine.waiting():
                key = f"{submission_id}/{node_id}"
                node = machine.nodes[node_id]
                queue.append(self.request(key, node.plan, team, node.queued_at))
                where[key] = (submission_id, machine, node_id)
        if not queue and not self._booked and not self._demand:
            self.queue, self._waiting_requests, self._waits = [], {}, {}
            return []
        decision = self.decide(queue)
        now = self._clock()
        requests = self._waiting_requests = {r.key: r for r in queue}
        self.queue = []
        self._waits = {key: waiting.why for key, waiting in decision.waiting.items()}
        for key, waiting in decision.waiting.items():
            submission_id, machine, node_id = where[key]
            machine.note_waiting(node_id, f"queue #{waiting.position}: {waiting.reason}")
            r = requests[key]
            self.queue.append({"position": waiting.position, "submission_id": submission_id, "node_id": node_id,
                               "team": r.team, "priority": str(r.priority), "pool": r.pool, "gpu": r.gpu, "cpu": r.cpu,
                               "waiting_s": round(now - r.ready_at, 3), "reason": waiting.reason})
        return [(where[r.key][0], where[r.key][2], placement) for r, placement in decision.admit]

    def on_transitions(self, submission_id: str, transitions: Iterable[Transition],
                       machine: RunMachine | None = None) -> list[Charge]:
        """An attempt that left RUNNING no longer holds its booking (capacity and quota); what it cost is
        added to its node and returned, for the record."""
        costs = []
        for t in transitions:
            if t.node_id is not None and t.source == NodeState.RUNNING:
                cost = self.release(f"{submission_id}/{t.node_id}")
                if cost and machine is not None:
                    machine.add_cost(t.node_id, cost)
                    costs.append(Charge(t.node_id, t.attempt, t.at, cost))
        return costs

    def decide(self, queue: list[Request]) -> Decision:
        """What to admit now; the admitted are booked (capacity and quota) until `release`."""
        now = self._clock()
        cluster = self._cluster()
        running = [r for r in self._running() if r.placement.node_id in cluster.nodes]  # a vanished node's go
        decision = self._policy.decide(now, queue, cluster, running, self._quotas.check)
        refused = self._quotas.commit(request for request, _ in decision.admit) if decision.admit else {}
        if refused:  # the team's quota actor said no (another admitter came first, or it is unreachable)
            waiting = dict(decision.waiting)
            for request, _ in decision.admit:
                if request.key in refused:
                    waiting[request.key] = Waiting(len(waiting) + 1, refused[request.key])
            decision = Decision(tuple(item for item in decision.admit if item[0].key not in refused), waiting,
                                decision.reservation)
        for request, placement in decision.admit:
            self._booked[request.key] = (request, placement, now)
        self._show_demand([r for r in queue if r.key in decision.waiting
                           and decision.waiting[r.key].why is WaitReason.NO_CAPACITY])
        self.last = decision
        return decision

    def _running(self) -> list[Running]:
        return [Running(key, r.team, r.priority, p, r.cpu, r.gpu, started, started + r.estimate_s, r.pool,
                        r.preemptible) for key, (r, p, started) in self._booked.items()]

    def victims(self) -> list[tuple[str, str, str]]:
        """Running work to preempt for the most urgent node that has waited past `preempt_after_s` for
        capacity: (submission, node, reason), the fewest GPU-seconds lost."""
        now = self._clock()
        cluster: Cluster | None = None
        running: list[Running] = []
        for item in self.queue:
            key = f"{item['submission_id']}/{item['node_id']}"
            request = self._waiting_requests[key]
            urgent = request.priority.rank >= Priority.HIGH.rank and item["waiting_s"] >= self.config.preempt_after_s
            if not urgent or self._waits.get(key) is not WaitReason.NO_CAPACITY:
                continue
            if self._quotas.holds(request):  # its own quota holds it: freeing room won't help
                continue
            if cluster is None:
                cluster = self._cluster()
                # Work admitted this very round has lost nothing yet, but stopping it gains nothing either.
                running = [r for r in self._running() if r.placement.node_id in cluster.nodes and r.started_at < now]
            chosen = choose_victims(request, cluster, running, now)
            if chosen:
                why = f"preempted for {request.key} ({request.priority}, waited {item['waiting_s']:.0f}s)"
                return [(sid, node_id, why) for sid, _, node_id in (victim.key.partition("/") for victim in chosen)]
        return []

    def release(self, key: str) -> float:
        """Give back what `key` booked; returns what its attempt cost (0 when it held nothing)."""
        booked = self._booked.pop(key, None)
        if booked is None:
            return 0.0
        request, placement, started = booked
        if request.team in self._quotas.ledgers:
            self._quotas.release(request.team, key)
            self._save_usage(self._quotas.ledgers[request.team])
        return self._rate(placement, request).cost(request.cpu, request.gpu, self._clock() - started)

    def _rate(self, placement: Placement, request: Request) -> Rate:
        """The rate of the pool where it ran (a *-spot node is cheaper), else of the pool it asked for."""
        node = next((n for n in self._nodes if n.node_id == placement.node_id), None)
        pool = (node.pool if node is not None else None) or request.pool
        return (self.config.pool_costs or {}).get(pool or "", self.config.cost)

    def _save_usage(self, ledger: QuotaLedger) -> None:
        """At most once a minute per team (the journal is append-only): a crash loses at most a minute
        of charged use."""
        now = self._clock()
        if self._journal is None or now - self._saved_at.get(ledger.team, -math.inf) < JOURNAL_EVERY_S:
            return
        self._saved_at[ledger.team] = now
        try:
            self._journal.save(ledger.team, ledger.usage_state())
        except Exception:  # noqa: BLE001 - the store's own error surfaces on the next durable write
            log.exception("could not save the quota use of %s", ledger.team)

    def booked_keys(self) -> list[str]:
        return list(self._booked)

    def view(self) -> dict[str, Any]:
        return {"admission": True, "queue": list(self.queue), "quotas": self.quotas()}

    def quotas(self) -> list[dict[str, Any]]:
        return self._quotas.snapshot()

    def _cluster(self) -> Cluster:
        """Ray's nodes as the policy sees them: totals, less what the fabric has admitted and not seen end."""
        now = time.monotonic()
        if now - self._nodes_at > CLUSTER_REFRESH_S:
            self._nodes, self._nodes_at = self._list_nodes(), now
        cluster = Cluster([Node(n.node_id, n.cpu_free, [Gpu(g.index, g.free, g.free_mem_gb) for g in n.gpus], n.pool,
                                n.spot) for n in self._nodes])
        for request, placement, _ in self._booked.values():
            if placement.node_id in cluster.nodes:
                cluster.take(request, placement)
        return cluster

    def _show_demand(self, held: list[Request]) -> None:
        """Work held for lack of capacity is not running yet: tell the autoscaler (a `ray up` or KubeRay
        cluster grows for the fabric's queue), and withdraw the ask once nothing is held. Only changes."""
        bundles = [_bundle(r) for r in held[:1000]]
        if bundles == self._demand:
            return
        self._demand = bundles
        if self._tell_demand is not None:
            try:
                self._tell_demand(bundles)
            except Exception:  # noqa: BLE001 - no autoscaler here: nothing to tell
                log.debug("the demand hint failed", exc_info=True)


def _bundle(request: Request) -> dict[str, float]:
    bundle = {"CPU": request.cpu, "GPU": request.gpu, **({f"pool:{request.pool}": 0.001} if request.pool else {})}
    return {key: value for key, value in bundle.items() if value > 0}



__all__ = ["AdmissionQueue", "Charge", "QuotaJournal", "Rate", "SchedulingConfig", "load_config"]
