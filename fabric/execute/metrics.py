"""fabric's metrics into Ray's: every update of `fabric.record.metrics` mirrored through
`ray.util.metrics`, so Ray's metrics agent exports them (as `ray_fabric_*`) beside Ray's own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fabric.record.metrics import BUCKETS_S, CATALOGUE, FabricMetrics, MetricSpec


class RayMetricsSink:
    """Creates each Ray metric on first use (they can only exist inside a Ray worker or driver)."""

    def __init__(self, catalogue: Mapping[str, MetricSpec] = CATALOGUE) -> None:
        self._catalogue = catalogue
        self._metrics: dict[str, Any] = {}

    def __call__(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        metric = self._metrics.get(name) or self._create(name)
        kind = self._catalogue[name].kind
        if kind == "counter":
            if value > 0:
                metric.inc(value, tags=dict(tags))
        elif kind == "gauge":
            metric.set(value, tags=dict(tags))
        else:
            metric.observe(value, tags=dict(tags))

    def _create(self, name: str) -> Any:
        from ray.util import metrics

        spec = self._catalogue[name]
        metric: Any  # a Counter, Gauge or Histogram: the sink calls what its kind has
        if spec.kind == "counter":
            metric = metrics.Counter(name, description=spec.help, tag_keys=spec.labels)
        elif spec.kind == "gauge":
            metric = metrics.Gauge(name, description=spec.help, tag_keys=spec.labels)
        else:
            metric = metrics.Histogram(name, description=spec.help, boundaries=list(BUCKETS_S), tag_keys=spec.labels)
        self._metrics[name] = metric
        return metric


def ray_metrics() -> FabricMetrics:
    return FabricMetrics(sink=RayMetricsSink())


__all__ = ["RayMetricsSink", "ray_metrics"]
