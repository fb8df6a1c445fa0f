"""The engine's admission queue, pure: the ready nodes of every run wait here, the policy decides what goes
and where, the team quota ledgers are charged, and what each attempt cost is worked out. The cluster, the
quota book, the journal of the day's use and the autoscaler hint are injected: `fabric.execute.scheduler`
passes Ray's (`ray.nodes()`, the quota actors, the store, `request_resources`).

Always on (FABRIC_ADMISSION=0 turns it off): the default config is `default_scheduling.yaml` beside this module,
and `$FABRIC_HOME/scheduling.yaml` (or `$FABRIC_SCHEDULING`), when it exists, is read over it:

    aging_s: 1800                      # a priority step up per this many seconds waited
    default_estimate_s: 3600           # EASY backfill's run time for nodes with no max_runtime
    pools: {backtest: {max_concurrency: 20, runs_on: [cpu-spot]}, agents: {max_concurrency: 12}}
    quotas: {research: {cpu: 64, gpu: 8, gpu_hours_per_day: 24, burst_gpu: 2, burst_gpu_hours_per_day: 4}}
    default_quota: {gpu: 8}            # every other team's budget
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from fabric.plan import NodePlan
from fabric.schedule.admission import (
    AdmissionPolicy,
    Booked,
    Cluster,
    Decision,
    Node,
    Placement,
    Request,
    Running,
    choose_victims,
)
from fabric.schedule.config import Rate, SchedulingConfig, load_config
from fabric.schedule.quota import NO_TEAM, QuotaBook, QuotaLedger
from fabric.schedule.run import RunMachine, Transition
from fabric.schedule.waitlist import Entry, Waitlist, rank_of
from fabric.spec import Priority
from fabric.states import TERMINAL_NODE_STATES, NodeState, WaitReason

log = logging.getLogger(__name__)

CLUSTER_REFRESH_S = 2.0
JOURNAL_EVERY_S = 60.0
ROUND_EVERY_S = 1.0  # a full round (aging, reasons, positions, demand, preemption) at least this often
ARRIVALS_EVERY_S = 0.1  # new waiting nodes get their reason and position within this (a full round; O(queue))
MIN_EAGER_DEPTH = 8
EAGER = ""  # the node id of an eager release's placement: Ray places it


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
                 demand: Demand | None = None, refresh_s: float | None = None) -> None:
        """`refresh_s`: how often `nodes()` is asked (0: every round, for a `nodes` that answers from memory;
        None: CLUSTER_REFRESH_S)."""
        self.config = config
        self._refresh_s = refresh_s
        self._policy = AdmissionPolicy(config.pools, config.aging_s)
        self._clock = clock
        self._list_nodes = nodes
        self._journal = journal
        self._tell_demand = demand
        # The engine passes the book kept in per-team quota actors (fabric/execute/quotas.py).
        self._quotas = quotas(config.quotas, clock, journal.load if journal is not None else None,
                              default=config.default_quota)
        self._booked: dict[str, tuple[Request, Placement, float]] = {}  # key -> request, placement, started_at
        self._nodes: list[Node] = []
        self._pool_of: dict[str, str | None] = {}  # node id -> its pool
        self._cpus = 0.0  # the CPUs of Ray's nodes
        self._book: Booked | None = None  # Ray's nodes less what is booked on them, kept in step (None: rebuild)
        self._nodes_at = -math.inf
        self._demand: list[dict[str, float]] | None = None
        self.last: Decision | None = None
        self.queue: list[dict[str, Any]] = []  # the waiting nodes as of the last full round, in queue order
        self._waitlist = Waitlist(config.aging_s)
        self._waits: dict[str, WaitReason] = {}  # key -> why it waits, as of the last full round
        self._eager_keys: set[str] = set()  # released ahead of capacity (`_eager`), not placed by the policy
        # A Ray task's booking (fused chain or map pack) follows its running member: rider key -> (booked key, since)
        self._carried: dict[str, tuple[str, float | None]] = {}
        self._runs: dict[str, tuple[RunMachine, str | None]] = {}  # every live run it was told of
        self._dirty = True
        self._added = False
        self._full_at = self._full_mono = -math.inf
        self._look_for_victims = False
        self._saved_at: dict[str, float] = {}

    def request(self, key: str, plan: NodePlan, team: str | None, queued_at: float | None) -> Request:
        unit = plan.unit
        gpus = max(unit.num_gpus, 1.0)
        preemptible = plan.qos == "spot_ok" and plan.priority in self.config.preemptible
        # Resources are per worker: a multi-worker node is booked whole (on one node: conservative for SPREAD).
        return Request(key, team or NO_TEAM, plan.priority, queued_at or self._clock(), unit.num_cpus * unit.workers,
                       unit.num_gpus * unit.workers,
                       float(unit.custom.get("gpu_mem_gb", 0.0)) / gpus, plan.pool,
                       plan.max_runtime or self.config.default_estimate_s, preemptible, plan.qos == "spot_ok",
                       unit.fallback_cpus * unit.workers if unit.fallback_cpus is not None else None,
                       unit.fallback_after_s if unit.fallback_after_s is not None
                       else self.config.gpu_fallback_after_s)

    def admit(self, runs: Iterable[tuple[str, RunMachine | None, str | None]]
              ) -> list[tuple[str, str, Placement | None]]:
        """One round: (submission, node, placement) to release now. `runs` are the runs that changed since the
        last round (a None machine: the run is gone); the queue keeps every other run's waiting nodes. A round
        with nothing new, nothing released and no change of cluster is skipped; once a second a full round
        looks at every run it knows and every waiting node again, applies aging and tells each why it waits."""
        now = self._clock()
        full = now - self._full_at >= ROUND_EVERY_S or time.monotonic() - self._full_mono >= ROUND_EVERY_S
        for submission_id, machine, team in runs:
            if machine is None or machine.done:
                self._waitlist.forget_run(submission_id)
                self._runs.pop(submission_id, None)
            else:
                known = submission_id in self._runs
                self._runs[submission_id] = (machine, team)
                self._sync(submission_id, machine, team, now, whole=not known)
        if full:  # a safety net: a run whose waiting nodes changed unseen is caught up within a second
            for submission_id, (machine, team) in list(self._runs.items()):
                self._sync(submission_id, machine, team, now, whole=True)
        if self._refresh_nodes():
            self._dirty = True
        # New waiting nodes get their reason and position soon: a full round, at most every ARRIVALS_EVERY_S
        # (nodes that get ready one by one would otherwise cost a look at the whole queue each); in between,
        # a round stops where the cluster is full as usual.
        full = full or self._added and time.monotonic() - self._full_mono >= ARRIVALS_EVERY_S
        if full:
            self._added = False
        if not (self._dirty or full):
            return []
        self._dirty = False
        if full:
            self._full_at, self._full_mono = now, time.monotonic()
        if not self._waitlist and not self._booked and not self._demand:
            self.queue, self._waits = [], {}
            return []
        if full:
            self._waitlist.reorder(now)
        decision = self.decide(self._waitlist.requests(), full=full)
        admitted = [(request, placement) for request, placement in decision.admit]
        for key, waiting in decision.waiting.items():
            entry = self._waitlist.get(key)
            if entry is not None:
                entry.machine.note_waiting(entry.node_id, f"queue #{waiting.position}: {waiting.reason}")
        if full:
            self._waits = {key: waiting.why for key, waiting in decision.waiting.items()}
            self._view(decision, now)
            self._look_for_victims = True
        admitted += self._eager(decision)
        out = []
        for request, placement in admitted:
            entry = self._waitlist.remove(request.key)
            if entry is not None:
                out.append((entry.submission_id, entry.node_id, None if placement.node_id == EAGER else placement))
        return out

    def due_in(self) -> float | None:
        """Seconds until the full round that new waiting nodes wait for (None: none waits for one)."""
        return max(ARRIVALS_EVERY_S - (time.monotonic() - self._full_mono), 0.0) if self._added else None

    def _sync(self, submission_id: str, machine: RunMachine, team: str | None, now: float, whole: bool) -> None:
        """The waitlist follows the run: its changes (O(changes)), or `whole`: all its waiting nodes."""
        def make(node_id: str) -> Entry:
            node = machine.nodes[node_id]
            return Entry(self.request(f"{submission_id}/{node_id}", node.plan, team, node.queued_at),
                         submission_id, node_id, machine)
        if whole:  # all its waiting nodes (the changes so far are in them)
            machine.waiting_changes()
            added = self._waitlist.sync_run(submission_id, machine.waiting(), make, now)
        else:
            added = self._waitlist.apply(submission_id, machine.waiting_changes(), make, now)
        if added:
            self._dirty = self._added = True

    def _eager(self, decision: Decision) -> list[tuple[Request, Placement]]:
        """Released to Ray ahead of free capacity, so that Ray's own queue never runs dry between two of the
        engine's rounds: only from the head of the queue (nothing that ranks before them is passed over),
        only CPU work of a pool without a limit, booked in its team's quota like any admission, and at most
        `eager_depth` at once. A more urgent node that comes later finds at most that many ahead of it in Ray."""
        room = self._eager_depth() - len(self._eager_keys)
        if room <= 0 or not self._waitlist:
            return []
        admitted = {request.key for request, _ in decision.admit}
        out: list[tuple[Request, Placement]] = []
        for key in self._waitlist.head():  # nothing leaves the waitlist while this reads it
            if key in admitted:
                continue
            request = self._waitlist.get(key).request  # type: ignore[union-attr]
            waits = decision.waiting.get(key)
            if (len(out) >= room or request.gpu > 0 or request.fallback_cpu is not None
                    or (request.pool or "") in self._policy.pools
                    or (waits is not None and waits.why is not WaitReason.NO_CAPACITY)
                    or self._quotas.check(request) is not None):
                break
            out.append((request, Placement(EAGER)))
        if out:
            self._quotas.commit(request for request, _ in out)
            now = self._clock()
            for request, placement in out:
                self._booked[request.key] = (request, placement, now)
                self._eager_keys.add(request.key)
        return out

    def _eager_depth(self) -> int:
        if self.config.eager_depth is not None:
            return self.config.eager_depth
        return max(MIN_EAGER_DEPTH, int(self._cpus))

    def _view(self, decision: Decision, now: float) -> None:
        """The queue as `GET /api/orch/queues` shows it (as of the last full round)."""
        self.queue = []
        for key, waiting in decision.waiting.items():
            entry = self._waitlist.get(key)
            if entry is None:
                continue
            r = entry.request
            self.queue.append({"position": waiting.position, "submission_id": entry.submission_id,
                               "node_id": entry.node_id, "team": r.team, "priority": str(r.priority), "pool": r.pool,
                               "gpu": r.gpu, "cpu": r.cpu, "waiting_s": round(now - r.ready_at, 3),
                               "reason": waiting.reason})

    def on_transitions(self, submission_id: str, transitions: Iterable[Transition],
                       machine: RunMachine | None = None) -> list[Charge]:
        """An attempt that left RUNNING no longer holds its booking (capacity and quota); what it cost is
        added to its node and returned, for the record."""
        costs = []
        for t in transitions:
            key = f"{submission_id}/{t.node_id}"
            # A rider stopped before it ran (the run ended under it) gives the chain's booking back too.
            if t.node_id is not None and (t.source == NodeState.RUNNING or (
                    key in self._carried and t.target in TERMINAL_NODE_STATES)):
                held, since = self._carried.pop(key, (key, None))
                cost = self._cost(held, since)
                rider = machine.carried_next(t.node_id, t.target == NodeState.SUCCEEDED) if machine else None
                if rider is not None and held in self._booked:  # the chain's task goes on: so does its booking
                    self._carried[f"{submission_id}/{rider}"] = (held, self._clock())
                else:
                    self.release(held)
                if cost and machine is not None:
                    machine.add_cost(t.node_id, cost)
                    costs.append(Charge(t.node_id, t.attempt, t.at, cost))
        return costs

    def decide(self, queue: Iterable[Request], *, full: bool = True) -> Decision:
        """What to admit now, `queue` in queue order; the admitted are booked (capacity and quota) until
        `release`. Not `full`: the round stops where the cluster has no room left for any waiting node."""
        now = self._clock()
        book = self._booked_now()
        decision = self._policy.decide(now, queue, book, (), self._quotas.check, ordered=True,
                                       stop_below=None if full else self._waitlist.least)
        if decision.admit:  # the actors hear of it off the engine's thread: nothing is refused here
            self._quotas.commit(request for request, _ in decision.admit)
        for request, placement in decision.admit:
            self._booked[request.key] = (request, placement, now)
            book.add(self._running_item(request.key, request, placement, now))
        if full:
            held = [e.request for e in self._waitlist.entries() if e.request.key in decision.waiting
                    and decision.waiting[e.request.key].why is WaitReason.NO_CAPACITY]
            self._show_demand(sorted(held, key=lambda r: rank_of(r, now, self.config.aging_s)))
        self.last = decision
        return decision

    @staticmethod
    def _running_item(key: str, r: Request, p: Placement, started: float) -> Running:
        return Running(key, r.team, r.priority, p, r.cpu, r.gpu, started, started + r.estimate_s, r.pool, r.preemptible)

    def victims(self) -> list[tuple[str, str, str]]:
        """Running work to preempt for the most urgent node that has waited past `preempt_after_s` for
        capacity: (submission, node, reason), the fewest GPU-seconds lost. Looked for once per full round."""
        if not self._look_for_victims:
            return []
        self._look_for_victims = False
        now = self._clock()
        cluster: Cluster | None = None
        running: list[Running] = []
        for item in self.queue:
            key = f"{item['submission_id']}/{item['node_id']}"
            entry = self._waitlist.get(key)
            if entry is None:  # admitted since the last full round
                continue
            request = entry.request
            urgent = request.priority.rank >= Priority.HIGH.rank and item["waiting_s"] >= self.config.preempt_after_s
            if not urgent or self._waits.get(key) is not WaitReason.NO_CAPACITY:
                continue
            if self._quotas.holds(request):  # its own quota holds it: freeing room won't help
                continue
            if cluster is None:
                book = self._booked_now()
                cluster = book.cluster
                # Work admitted this very round has lost nothing yet, but stopping it gains nothing either.
                running = [r for r in book if r.started_at < now]
            chosen = choose_victims(request, cluster, running, now)
            if chosen:
                why = f"preempted for {request.key} ({request.priority}, waited {item['waiting_s']:.0f}s)"
                rider_of = {held: rider for rider, (held, _) in self._carried.items()}  # a chain's running member
                return [(sid, node_id, why) for sid, _, node_id in (rider_of.get(victim.key, victim.key).partition("/")
                                                                    for victim in chosen)]
        return []

    def release(self, key: str) -> float:
        """Give back what `key` booked; returns what its attempt cost (0 when it held nothing)."""
        booked = self._booked.pop(key, None)
        if booked is None:
            return 0.0
        self._eager_keys.discard(key)
        self._dirty = True  # capacity or quota came back: the next round looks again
        if self._book is not None:
            self._book.end(key)
        cost = self._cost(key, None, booked)
        if booked[0].team in self._quotas.ledgers:
            self._quotas.release(booked[0].team, key)
            self._save_usage(self._quotas.ledgers[booked[0].team])
        return cost

    def _cost(self, key: str, since: float | None, booked: tuple[Request, Placement, float] | None = None) -> float:
        """What `key`'s booking cost from `since` (its start when None) until now; 0 when it holds nothing."""
        request, placement, started = booked or self._booked.get(key) or (None, None, 0.0)
        if request is None or placement is None:
            return 0.0
        begun = started if since is None else since
        return self._rate(placement, request).cost(request.cpu, request.gpu, self._clock() - begun)

    def _rate(self, placement: Placement, request: Request) -> Rate:
        """The rate of the pool where it ran (a *-spot node is cheaper), else of the pool it asked for."""
        pool = self._pool_of.get(placement.node_id) or request.pool
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

    def _refresh_nodes(self) -> bool:
        """Ask for Ray's nodes when due; True when the answer is a new one."""
        now = time.monotonic()
        if now - self._nodes_at < (CLUSTER_REFRESH_S if self._refresh_s is None else self._refresh_s):
            return False
        nodes, self._nodes_at = self._list_nodes(), now
        changed = nodes is not self._nodes
        if changed:
            self._nodes, self._book = nodes, None
            self._pool_of = {n.node_id: n.pool for n in nodes}
            self._cpus = sum(n.cpu_free for n in nodes)
        return changed

    def _booked_now(self) -> Booked:
        """Ray's nodes as the policy sees them: totals, less what the fabric has admitted and not seen end; kept
        in step with each admission and release, built again only when Ray's nodes change."""
        self._refresh_nodes()
        if self._book is None:
            cluster = Cluster(n.clone() for n in self._nodes)
            running = []
            for key, (request, placement, started) in self._booked.items():
                if placement.node_id in cluster.nodes:  # a vanished node's go (and an eager release: Ray's)
                    cluster.take(request, placement)
                    running.append(self._running_item(key, request, placement, started))
            self._book = Booked(cluster, running)
        return self._book

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
