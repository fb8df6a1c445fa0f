"""fabric's metrics: one catalogue of names, derived from the runs' state transitions, kept in a
prometheus_client registry of their own and rendered by it. Pure: a sink mirrors every update into
Ray's metrics (`fabric.execute.metrics`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fabric.states import NodeState

BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...]


# The names the code exports: docs, the Grafana dashboard (k8s/grafana) and its test refer to these.
CATALOGUE: dict[str, MetricSpec] = {
    "fabric_queue_depth": MetricSpec("gauge", "nodes ready and waiting to run", ("pool", "priority")),
    "fabric_queue_wait_seconds": MetricSpec("histogram", "time from ready to running", ("pool", "priority")),
    "fabric_node_run_seconds": MetricSpec("histogram", "run time of an attempt", ("kind", "pool", "outcome")),
    "fabric_nodes_running": MetricSpec("gauge", "attempts running now", ("pool",)),
    "fabric_gpus_allocated": MetricSpec("gauge", "GPUs held by running attempts", ("team",)),
    "fabric_gpu_seconds_total": MetricSpec("counter", "GPU-seconds used by attempts", ("team",)),
    "fabric_cpu_seconds_total": MetricSpec("counter", "CPU-seconds reserved by attempts", ("team",)),
    "fabric_node_retries_total": MetricSpec("counter", "attempts that failed and will be retried", ("pool",)),
    "fabric_nodes_finished_total": MetricSpec("counter", "nodes that ended, by their end state", ("kind", "state")),
    "fabric_preemptions_total": MetricSpec("counter", "running attempts stopped and requeued", ("pool",)),
    "fabric_cache_hits_total": MetricSpec("counter", "nodes whose outputs were reused (CACHED)", ("kind",)),
    "fabric_submissions_finished_total": MetricSpec("counter", "submissions that ended", ("team", "state")),
}
# The gateway's own series (serve/gateway_metrics.py): its /metrics and Ray's agent export these too.
GATEWAY: dict[str, MetricSpec] = {
    "fabric_gateway_requests_total": MetricSpec("counter", "HTTP requests by route and status", ("route", "status")),
    "fabric_registry_up": MetricSpec("gauge", "whether the registry answered the gateway's last check", ()),
}
EXPORTED = {**CATALOGUE, **GATEWAY}  # every name fabric exports (Ray's agent: each with `ray_` before it)


class NodeFacts(Protocol):
    """What the metrics need of a planned node (fabric.plan.NodePlan has it). Read-only, so a frozen
    NodePlan, whose priority is a `Priority` (a str), satisfies it."""

    @property
    def kind(self) -> str: ...
    @property
    def pool(self) -> str | None: ...
    @property
    def priority(self) -> str: ...
    @property
    def unit(self) -> Any: ...


Sink = Callable[[str, float, Mapping[str, str]], None]  # (name, value: delta, level or sample, tags)


class FabricMetrics:
    """Series derived from transitions. Entry and exit of a state are paired per node, so a run
    restored by a restarted registry never drives a gauge below zero. Each instance owns its
    CollectorRegistry (never prometheus_client's global one): two engines, or two tests, never share series."""

    def __init__(self, sink: Sink | None = None) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self._series: dict[str, Any] = {n: make_metric(n, spec, self.registry) for n, spec in CATALOGUE.items()}
        self._children: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        # Gauge levels, for the sink (which is handed a gauge's level, not its change).
        self._levels: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        # What the sink has not seen yet, merged: counters summed, gauges at their last level, histogram
        # samples kept. `flush()` hands it over (the engine does, off the per-node path).
        self._unsent: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._unsent_samples: list[tuple[str, float, tuple[tuple[str, str], ...]]] = []
        self._queued: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._running: dict[tuple[str, str], float] = {}

    def on_transitions(self, submission_id: str, team: str | None, nodes: Mapping[str, NodeFacts],
                       transitions: Iterable[Any]) -> None:
        with self._lock:
            for t in transitions:
                if t.node_id is None:
                    if t.target != "RUNNING":
                        self._add("fabric_submissions_finished_total", 1, team=team or "-", state=t.target)
                    continue
                self._node(submission_id, team or "-", nodes[t.node_id], t)

    def _node(self, submission_id: str, team: str, node: NodeFacts, t: Any) -> None:
        key = (submission_id, t.node_id)
        pool, priority = node.pool or "default", node.priority
        if t.source == NodeState.QUEUED and key in self._queued:
            queued_at, labels = self._queued.pop(key)
            self._add("fabric_queue_depth", -1, **labels)
            if t.target == NodeState.RUNNING:
                self._observe("fabric_queue_wait_seconds", max(t.at - queued_at, 0.0), **labels)
        if t.source == NodeState.RUNNING and key in self._running:
            took = max(t.at - self._running.pop(key), 0.0)
            outcome = "retry" if t.target == NodeState.RETRYING else str(t.target).lower()
            self._observe("fabric_node_run_seconds", took, kind=node.kind, pool=pool, outcome=outcome)
            self._add("fabric_nodes_running", -1, pool=pool)
            if node.unit.num_gpus:
                self._add("fabric_gpus_allocated", -node.unit.num_gpus, team=team)
                self._add("fabric_gpu_seconds_total", node.unit.num_gpus * took, team=team)
            self._add("fabric_cpu_seconds_total", node.unit.num_cpus * took, team=team)
        if t.source == NodeState.RUNNING and t.target == NodeState.QUEUED:
            self._add("fabric_preemptions_total", 1, pool=pool)
        if t.target == NodeState.QUEUED:
            labels = {"pool": pool, "priority": priority}
            self._queued[key] = (t.at, labels)
            self._add("fabric_queue_depth", 1, **labels)
        elif t.target == NodeState.RUNNING:
            self._running[key] = t.at
            self._add("fabric_nodes_running", 1, pool=pool)
            if node.unit.num_gpus:
                self._add("fabric_gpus_allocated", node.unit.num_gpus, team=team)
        elif t.target == NodeState.RETRYING:
            self._add("fabric_node_retries_total", 1, pool=pool)
        elif t.target == NodeState.CACHED:
            self._add("fabric_cache_hits_total", 1, kind=node.kind)
        if NodeState(t.target).terminal:
            self._add("fabric_nodes_finished_total", 1, kind=node.kind, state=t.target)

    def _add(self, name: str, delta: float, **tags: str) -> None:
        key = (name, tuple(sorted(tags.items())))
        self._child(key, tags).inc(delta)
        if CATALOGUE[name].kind == "gauge":
            self._levels[key] = self._levels.get(key, 0.0) + delta
            if self._sink is not None:
                self._unsent[key] = self._levels[key]
        elif self._sink is not None:
            self._unsent[key] = self._unsent.get(key, 0.0) + delta

    def _observe(self, name: str, value: float, **tags: str) -> None:
        key = (name, tuple(sorted(tags.items())))
        self._child(key, tags).observe(value)
        if self._sink is not None:
            self._unsent_samples.append((name, value, key[1]))

    def _child(self, key: tuple[str, tuple[tuple[str, str], ...]], tags: dict[str, str]) -> Any:
        """The labelled series, found once: prometheus_client's `labels()` costs more than the update itself."""
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._series[key[0]].labels(**tags)
        return child

    def flush(self) -> None:
        """Hand everything new to the sink: one call per changed series, one per histogram sample."""
        if self._sink is None:
            return
        with self._lock:
            unsent, self._unsent = self._unsent, {}
            samples, self._unsent_samples = self._unsent_samples, []
        for (name, tags), value in unsent.items():
            self._sink(name, value, dict(tags))
        for name, value, tags in samples:
            self._sink(name, value, dict(tags))

    def value(self, name: str, **tags: str) -> float:
        """A series' value as exported (a histogram's: its number of observations); 0 where none."""
        sample = f"{name}_count" if CATALOGUE[name].kind == "histogram" else name
        with self._lock:
            return self.registry.get_sample_value(sample, tags) or 0.0

    def render(self) -> str:
        """Prometheus text exposition (format 0.0.4) of every series, by prometheus_client."""
        with self._lock:
            return generate_latest(self.registry).decode()


def make_metric(name: str, spec: MetricSpec, registry: CollectorRegistry) -> Any:
    """The prometheus_client metric for one catalogue entry, in `registry`."""
    if spec.kind == "counter":
        return Counter(name, spec.help, spec.labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(name, spec.help, spec.labels, registry=registry)
    return Histogram(name, spec.help, spec.labels, registry=registry, buckets=BUCKETS_S)


__all__ = ["BUCKETS_S", "CATALOGUE", "EXPORTED", "GATEWAY", "FabricMetrics", "MetricSpec", "make_metric"]
