"""fabric's metrics, pure: series derived from transitions, paired entries and exits, Prometheus text;
and the Grafana dashboard refers only to names the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from fabric.record.metrics import CATALOGUE, FabricMetrics

REPO = Path(__file__).resolve().parents[2]


def node(kind="python_task", pool=None, priority="normal", gpus=0.0, cpus=1.0):
    return SimpleNamespace(kind=kind, pool=pool, priority=priority, unit=SimpleNamespace(num_gpus=gpus, num_cpus=cpus))


def t(node_id, source, target, at):
    return SimpleNamespace(node_id=node_id, source=source, target=target, at=at)


def test_a_retried_gpu_node_gives_waits_run_times_gpu_seconds_and_retries():
    calls = []
    metrics = FabricMetrics(sink=lambda name, value, tags: calls.append((name, value, dict(tags))))
    nodes = {"train": node(pool="gpu-spot", gpus=2.0, cpus=4.0)}
    metrics.on_transitions("s1", "research", nodes, [
        t("train", "PENDING", "QUEUED", 0.0), t("train", "QUEUED", "RUNNING", 2.0)])
    assert metrics.value("fabric_gpus_allocated", team="research") == 2.0
    assert metrics.value("fabric_queue_depth", pool="gpu-spot", priority="normal") == 0.0
    metrics.on_transitions("s1", "research", nodes, [
        t("train", "RUNNING", "RETRYING", 5.0), t("train", "RETRYING", "QUEUED", 6.0),
        t("train", "QUEUED", "RUNNING", 7.0), t("train", "RUNNING", "SUCCEEDED", 10.0),
        t(None, "RUNNING", "SUCCEEDED", 10.0)])
    assert metrics.value("fabric_gpus_allocated", team="research") == 0.0
    assert metrics.value("fabric_gpu_seconds_total", team="research") == 2.0 * (3 + 3)
    assert metrics.value("fabric_cpu_seconds_total", team="research") == 4.0 * (3 + 3)
    assert metrics.value("fabric_node_retries_total", pool="gpu-spot") == 1
    assert metrics.value("fabric_queue_wait_seconds", pool="gpu-spot", priority="normal") == 2  # observations
    assert metrics.value("fabric_nodes_finished_total", kind="python_task", state="SUCCEEDED") == 1
    assert metrics.value("fabric_submissions_finished_total", team="research", state="SUCCEEDED") == 1
    assert calls == []  # nothing reaches the sink on the per-node path ...
    metrics.flush()  # ... but on a flush: one call per changed series, gauges at their level
    assert ("fabric_gpus_allocated", 0.0, {"team": "research"}) in calls
    assert ("fabric_gpu_seconds_total", 12.0, {"team": "research"}) in calls
    assert sum(1 for name, _, _ in calls if name == "fabric_queue_wait_seconds") == 2  # every sample

    families = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    waits = {s.labels.get("le"): s.value for s in families["fabric_queue_wait_seconds"].samples
             if s.name.endswith("_bucket")}
    assert waits["1.0"] == 1 and waits["5.0"] == 2 and waits["+Inf"] == 2  # waits of 2 s and 1 s
    assert set(families) == {name.removesuffix("_total") for name in CATALOGUE}  # every name, parseable


def test_a_restored_run_never_drives_a_gauge_below_zero():
    metrics = FabricMetrics()
    nodes = {"a": node(gpus=1.0)}
    # A registry restarted mid-run sees the node leave RUNNING without having seen it enter.
    metrics.on_transitions("s2", None, nodes, [t("a", "RUNNING", "SUCCEEDED", 3.0)])
    assert metrics.value("fabric_gpus_allocated", team="-") == 0.0
    assert metrics.value("fabric_nodes_running", pool="default") == 0.0
    assert metrics.value("fabric_nodes_finished_total", kind="python_task", state="SUCCEEDED") == 1


def test_the_grafana_dashboard_uses_only_exported_metric_names():
    dashboard = json.loads((REPO / "k8s/grafana/fabric-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 8
    names = {re.sub(r"_(bucket|sum|count)$", "", name.removeprefix("ray_"))
             for expr in exprs for name in re.findall(r"\b(?:ray_)?fabric_[a-z_]+", expr)}
    exported = set(CATALOGUE) | {"fabric_gateway_requests_total", "fabric_registry_up"}
    assert names and names <= exported, f"not exported: {names - exported}"
    assert {"fabric_queue_depth", "fabric_queue_wait_seconds", "fabric_gpu_seconds_total"} <= names

