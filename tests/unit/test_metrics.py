"""fabric's metrics, pure: series derived from transitions, paired entries and exits, Prometheus text;
and the Grafana dashboard refers only to names the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from fabric.record.metrics import CATALOGUE, EXPORTED, FabricMetrics

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
    # Every name, parseable; prometheus_client adds its standard `<name>_created` series to counters and
    # histograms (PROMETHEUS_DISABLE_CREATED_SERIES=True turns them off; Ray's agent has none).
    exported = {name for name in families if not name.endswith("_created")}
    assert exported == {name.removesuffix("_total") for name in CATALOGUE}
    assert families["fabric_gpu_seconds"].type == "counter" and families["fabric_queue_depth"].type == "gauge"
    gpu = {s.name: s.value for s in families["fabric_gpu_seconds"].samples}
    assert gpu == {"fabric_gpu_seconds_total": 12.0}  # the name as Ray's agent exports it, with `ray_` before it


def test_a_restored_run_never_drives_a_gauge_below_zero():
    metrics = FabricMetrics()
    nodes = {"a": node(gpus=1.0)}
    # A registry restarted mid-run sees the node leave RUNNING without having seen it enter.
    metrics.on_transitions("s2", None, nodes, [t("a", "RUNNING", "SUCCEEDED", 3.0)])
    assert metrics.value("fabric_gpus_allocated", team="-") == 0.0
    assert metrics.value("fabric_nodes_running", pool="default") == 0.0
    assert metrics.value("fabric_nodes_finished_total", kind="python_task", state="SUCCEEDED") == 1


def test_each_fabric_metrics_has_its_own_registry():
    one, two = FabricMetrics(), FabricMetrics()
    one.on_transitions("s3", "a", {"x": node()}, [t("x", "RUNNING", "SUCCEEDED", 1.0)])
    assert one.value("fabric_nodes_finished_total", kind="python_task", state="SUCCEEDED") == 1
    assert two.value("fabric_nodes_finished_total", kind="python_task", state="SUCCEEDED") == 0
    assert "fabric_nodes_finished_total{" not in two.render()


def test_the_grafana_dashboard_queries_exported_names_through_its_prefix_and_datasource_variables():
    dashboard = json.loads((REPO / "k8s/grafana/fabric-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["prefix"]["current"]["value"] == "ray_"  # Ray's metrics agent: `ray_` + the name
    targets = [(panel, target) for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(targets) >= 8
    names = set()
    for panel, target in targets:
        for where in (panel, target):
            assert where.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        expr = target["expr"]
        # Every metric in the query goes through the prefix: no bare `fabric_…`, no hard-coded `ray_fabric_…`.
        bare = re.findall(r"(?<!\$\{prefix\})\bfabric_[a-z_]+|\w+_fabric_[a-z_]+", expr)
        assert not bare, f"{panel['title']}: {bare} lack ${{prefix}}"
        used = {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\$\{prefix\}(fabric_[a-z_]+)", expr)}
        assert used, f"{panel['title']}: no fabric metric in {expr}"
        names |= used
    assert names <= set(EXPORTED), f"not exported: {names - set(EXPORTED)}"
    assert {"fabric_queue_depth", "fabric_queue_wait_seconds", "fabric_gpu_seconds_total",
            "fabric_gateway_requests_total"} <= names
