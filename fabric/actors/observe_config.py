"""Which lineage and trace sinks are asked for. Every knob is resolved here, in one order: the `FABRIC_*`
setting where set (fabric's own override, read once into `fabric.settings.Settings`), else the standard
variable (`OPENLINEAGE_*`, `OTEL_*`, as the OpenLineage and OpenTelemetry clients define them), else fabric's
default. Pure: it reads a Settings and a mapping. Also the lineage file's transport, which the lineage process
writes through."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from fabric.settings import Settings

TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class LineageConfig:
    mode: str  # file | http | off
    file: str = ""
    max_bytes: int = 64 << 20
    backups: int = 5
    url: str = ""
    endpoint: str = "api/v1/lineage"
    api_key: str | None = None
    namespace: str = "fabric"


@dataclass(frozen=True)
class TraceConfig:
    endpoint: str | None  # the full URL spans are POSTed to (…/v1/traces); None: traces are off
    service_name: str = "fabric"


def lineage_namespace(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return settings.lineage_namespace or env.get("OPENLINEAGE_NAMESPACE") or "fabric"


def lineage_config(settings: Settings, env: Mapping[str, str] | None = None) -> LineageConfig:
    """FABRIC_LINEAGE (file | http | off), where set, decides; else OPENLINEAGE_DISABLED=true turns lineage off,
    and OPENLINEAGE_URL (or FABRIC_LINEAGE_URL) sends it over HTTP; else it goes to the file."""
    env = os.environ if env is None else env
    url = settings.lineage_url or env.get("OPENLINEAGE_URL") or ""
    mode = settings.lineage
    if mode is None:
        disabled = env.get("OPENLINEAGE_DISABLED", "").lower() in TRUE
        mode = "off" if disabled else "http" if url else "file"
    if mode == "off":
        return LineageConfig("off")
    namespace = lineage_namespace(settings, env)
    if mode == "http":  # Settings refused FABRIC_LINEAGE=http with no URL anywhere
        return LineageConfig("http", url=url, namespace=namespace,
                             endpoint=env.get("OPENLINEAGE_ENDPOINT") or "api/v1/lineage",
                             api_key=settings.lineage_api_key or env.get("OPENLINEAGE_API_KEY") or None)
    return LineageConfig("file", file=settings.lineage_file, namespace=namespace,
                         max_bytes=settings.lineage_file_max_bytes, backups=settings.lineage_file_backups)


def trace_config(settings: Settings, env: Mapping[str, str] | None = None) -> TraceConfig:
    """FABRIC_OTLP_ENDPOINT, where set, turns traces on (spans to <it>/v1/traces), whatever OTEL_SDK_DISABLED says.
    Else OTEL_SDK_DISABLED=true keeps them off; else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) or
    OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces) turns them on. Nothing set: off."""
    env = os.environ if env is None else env
    service = (env.get("OTEL_SERVICE_NAME") or _resource_attribute(env.get("OTEL_RESOURCE_ATTRIBUTES", ""),
                                                                    "service.name") or "fabric")
    if settings.otlp_endpoint:
        return TraceConfig(settings.otlp_endpoint.rstrip("/") + "/v1/traces", service)
    if env.get("OTEL_SDK_DISABLED", "").lower() in TRUE:
        return TraceConfig(None, service)
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return TraceConfig(env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], service)
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return TraceConfig(env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces", service)
    return TraceConfig(None, service)


def _resource_attribute(attributes: str, key: str) -> str | None:
    """One key of OTEL_RESOURCE_ATTRIBUTES (`k=v,k2=v2`, values percent-encoded, as the spec says)."""
    for item in attributes.split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip() == key and value.strip():
            return unquote(value.strip())
    return None


__all__ = ["LineageConfig", "TraceConfig", "lineage_config", "lineage_namespace", "rotating_file_transport",
           "trace_config"]


def rotating_file_transport(config: LineageConfig) -> Any:
    """openlineage-python's file transport, writing through `RotatingLines` (rotated by size, nothing lost
    across a rotation), also taking events already built as JSON-ready dicts, many per write: one open and
    one write per batch instead of per event keeps a 1,000-node run's lineage from competing with its nodes for
    the CPU."""
    from openlineage.client.serde import Serde
    from openlineage.client.transport.file import FileConfig, FileTransport

    from fabric.record.rotating import RotatingLines

    json_line = _json_lines()

    class RotatingFileTransport(FileTransport):
        def __init__(self) -> None:
            super().__init__(FileConfig(log_file_path=config.file, append=True))
            self.lines = RotatingLines(config.file, config.max_bytes, config.backups)

        def emit(self, event: Any) -> None:
            self.lines.write([Serde.to_json(event)])

        def emit_many(self, events: list[dict[str, Any]]) -> None:
            self.lines.write([json_line(e) for e in events])

    return RotatingFileTransport()


def _json_lines() -> Callable[[dict[str, Any]], str]:
    """One event as compact JSON with sorted keys: orjson (the observe extra) where installed, else json."""
    try:
        import orjson
    except ImportError:
        return lambda event: json.dumps(event, sort_keys=True, separators=(",", ":"))
    return lambda event: orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode()
