"""The gateway's own series (requests by route and status, whether the registry answers): kept in a
prometheus_client registry for its `/metrics`, and mirrored into Ray's metrics agent like the engine's."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, generate_latest

from fabric.execute.metrics import RayMetricsSink
from fabric.record.metrics import GATEWAY, make_metric

log = logging.getLogger(__name__)


class GatewayMetrics:
    """One per replica process (the middleware is module-level): Prometheus text for `/metrics`, and the same
    updates into Ray's agent, which exports them as `ray_fabric_gateway_requests_total` and `ray_fabric_registry_up`."""

    def __init__(self, mirror: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._series = {name: make_metric(name, spec, self.registry) for name, spec in GATEWAY.items()}
        self._ray = RayMetricsSink(GATEWAY) if mirror else None

    def request(self, route: str, status: int) -> None:
        self._series["fabric_gateway_requests_total"].labels(route=route, status=str(status)).inc()
        self._mirror("fabric_gateway_requests_total", 1.0, {"route": route, "status": str(status)})

    def registry_up(self, up: bool) -> None:
        self._series["fabric_registry_up"].set(1.0 if up else 0.0)
        self._mirror("fabric_registry_up", 1.0 if up else 0.0, {})

    def render(self) -> str:
        return generate_latest(self.registry).decode()

    def _mirror(self, name: str, value: float, tags: dict[str, str]) -> None:
        if self._ray is None:
            return
        try:
            self._ray(name, value, tags)
        except Exception:  # noqa: BLE001 - outside a Ray worker (or if Ray's metrics fail) /metrics still answers
            log.debug("fabric gateway metric %s not mirrored into Ray", name, exc_info=True)
