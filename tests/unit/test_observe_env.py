"""The standard OTEL_* and OPENLINEAGE_* variables drive traces and lineage, a FABRIC_* variable overrides each
where set, and the lineage file is rotated by size without losing an event. No Ray; the transports are real
(openlineage-python's HTTP transport, the OTLP/HTTP exporter) and post to a stdlib server on loopback."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fabric.actors.observe_config import lineage_config, trace_config
from fabric.errors import FabricError
from fabric.record.lineage import lineage_events
from fabric.record.rotating import RotatingLines
from fabric.settings import Settings
from tests.unit.test_lineage import EVENTS, NODES, RECORD

pytestmark = pytest.mark.timeout(60)

VARIABLES = ("FABRIC_LINEAGE", "FABRIC_LINEAGE_FILE", "FABRIC_LINEAGE_URL", "FABRIC_LINEAGE_API_KEY",
             "FABRIC_LINEAGE_NAMESPACE", "FABRIC_LINEAGE_FILE_MAX_BYTES", "FABRIC_LINEAGE_FILE_BACKUPS",
             "FABRIC_OTLP_ENDPOINT", "OPENLINEAGE_URL", "OPENLINEAGE_API_KEY", "OPENLINEAGE_NAMESPACE",
             "OPENLINEAGE_DISABLED", "OPENLINEAGE_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT",
             "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SDK_DISABLED")


@pytest.fixture
def env(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class _Sink(BaseHTTPRequestHandler):
    received: list[tuple[str, dict, bytes]] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def sink():
    _Sink.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Sink.received
    server.shutdown()


# -- precedence, as a table -----------------------------------------------------------------------------

@pytest.mark.parametrize(("variables", "endpoint"), [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://col:4318/"}, "http://col:4318/v1/traces"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://col:4318/custom"}, "http://col:4318/custom"),  # used as is
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b/t"}, "http://b/t"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b/t", "FABRIC_OTLP_ENDPOINT": "http://f:4318"},
     "http://f:4318/v1/traces"),  # FABRIC_ overrides the standard variables
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_SDK_DISABLED": "true"}, None),
    ({"FABRIC_OTLP_ENDPOINT": "http://f:4318", "OTEL_SDK_DISABLED": "true"}, "http://f:4318/v1/traces"),
])
def test_the_traces_endpoint_fabric_first_then_otel(variables, endpoint):
    assert trace_config(Settings.from_env(variables), variables).endpoint == endpoint


@pytest.mark.parametrize(("variables", "service"), [
    ({}, "fabric"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "team=q,service.name=fabric%20prod"}, "fabric prod"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=a", "OTEL_SERVICE_NAME": "b"}, "b"),
])
def test_the_service_name_from_otel_variables(variables, service):
    assert trace_config(Settings.from_env(variables), variables).service_name == service


@pytest.mark.parametrize(("variables", "expected"), [
    ({}, ("file", "", None, "fabric")),
    ({"OPENLINEAGE_URL": "http://m:5000", "OPENLINEAGE_API_KEY": "k", "OPENLINEAGE_NAMESPACE": "quant"},
     ("http", "http://m:5000", "k", "quant")),
    ({"OPENLINEAGE_URL": "http://m:5000", "FABRIC_LINEAGE_URL": "http://f:5000", "OPENLINEAGE_API_KEY": "k",
      "FABRIC_LINEAGE_API_KEY": "fk", "OPENLINEAGE_NAMESPACE": "quant", "FABRIC_LINEAGE_NAMESPACE": "fq"},
     ("http", "http://f:5000", "fk", "fq")),
    ({"OPENLINEAGE_URL": "http://m:5000", "FABRIC_LINEAGE": "file"}, ("file", "", None, "fabric")),
    ({"OPENLINEAGE_DISABLED": "true", "OPENLINEAGE_URL": "http://m:5000"}, ("off", "", None, "fabric")),
    ({"OPENLINEAGE_DISABLED": "true", "FABRIC_LINEAGE": "file"}, ("file", "", None, "fabric")),
    ({"FABRIC_LINEAGE": "off"}, ("off", "", None, "fabric")),
    ({"FABRIC_LINEAGE": "http", "OPENLINEAGE_URL": "http://m:5000"}, ("http", "http://m:5000", None, "fabric")),
])
def test_lineage_fabric_first_then_openlineage(variables, expected, tmp_path):
    config = lineage_config(Settings.from_env(variables, home=str(tmp_path)), variables)
    assert (config.mode, config.url, config.api_key, config.namespace) == expected
    if config.mode == "file":
        assert config.file == str(tmp_path / "lineage" / "events.jsonl") and config.max_bytes == 64 << 20
        assert config.backups == 5


def test_lineage_over_http_with_no_url_anywhere_is_refused_with_the_fix():
    with pytest.raises(FabricError, match="needs a URL") as refused:
        Settings.from_env({"FABRIC_LINEAGE": "http"})
    assert "OPENLINEAGE_URL" in refused.value.fix


# -- the same, through the real clients and monkeypatched os.environ ------------------------------------

def test_openlineage_variables_send_lineage_over_http_and_fabric_ones_override_them(env, sink, tmp_path):
    from fabric.actors.observe import lineage_client, to_openlineage

    url, received = sink
    env.setenv("OPENLINEAGE_URL", "http://127.0.0.1:9")  # nothing listens there: FABRIC_LINEAGE_URL must win
    env.setenv("FABRIC_LINEAGE_URL", url)
    env.setenv("OPENLINEAGE_API_KEY", "standard-key")
    env.setenv("OPENLINEAGE_NAMESPACE", "quant")
    client = lineage_client(Settings.from_env(home=str(tmp_path)))
    events = lineage_events(RECORD, EVENTS, NODES)
    client.emit(to_openlineage(events[0]))
    [(path, headers, body)] = received
    assert path == "/api/v1/lineage" and headers["Authorization"] == "Bearer standard-key"
    assert json.loads(body)["run"]["runId"] == events[0]["run"]["runId"]
    assert not (tmp_path / "lineage").exists()  # http, not the file


def test_otel_variables_send_spans_with_their_service_name_and_resource(env, sink):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from fabric.actors.observe import SpanExporter

    url, received = sink
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    env.setenv("OTEL_SERVICE_NAME", "fabric-prod")
    env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    config = trace_config(Settings.from_env())
    assert SpanExporter(config.endpoint, config.service_name).export(RECORD, EVENTS, {"a": "cpu"}) > 0
    assert {path for path, _, _ in received} == {"/v1/traces"}
    request = ExportTraceServiceRequest.FromString(received[0][2])
    attributes = {a.key: a.value.string_value for a in request.resource_spans[0].resource.attributes}
    assert attributes["service.name"] == "fabric-prod" and attributes["deployment.environment"] == "test"


def test_disabled_by_the_standard_variables_the_store_is_left_unwrapped(env, tmp_path):
    from fabric.actors.observe import observed

    env.setenv("OPENLINEAGE_DISABLED", "true")
    env.setenv("OTEL_SDK_DISABLED", "true")
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    store = object()
    assert observed(store, Settings.from_env(home=str(tmp_path))) is store
    assert not (tmp_path / "lineage").exists()


# -- rotation -------------------------------------------------------------------------------------------

def test_rotation_keeps_every_line_whole_and_in_order_across_files(tmp_path):
    lines = RotatingLines(tmp_path / "events.jsonl", max_bytes=100, backups=100)
    written = [json.dumps({"n": n, "pad": "x" * (n % 7)}) for n in range(200)]
    for start in range(0, 200, 9):  # batches that straddle rotations
        lines.write(written[start:start + 9])
    files = lines.files()
    assert len(files) > 20 and all(f.stat().st_size <= 100 for f in files)
    read = [line for f in files for line in f.read_text().splitlines()]
    assert read == written  # nothing lost, nothing split, nothing out of order


def test_rotation_drops_only_the_files_past_backups(tmp_path):
    lines = RotatingLines(tmp_path / "events.jsonl", max_bytes=50, backups=2)
    written = [f"line-{n:04d}" for n in range(100)]  # 10 bytes each: 5 per file
    for line in written:
        lines.write([line])
    files = lines.files()
    assert [f.name for f in files] == ["events.jsonl.2", "events.jsonl.1", "events.jsonl"]
    read = [line for f in files for line in f.read_text().splitlines()]
    assert read == written[-len(read):] and len(read) == 15  # the newest, contiguous
    big = "y" * 80  # a line larger than max_bytes gets a file of its own
    lines.write([big, "after"])
    assert lines.files()[-2].read_text() == big + "\n" and lines.files()[-1].read_text() == "after\n"


def test_the_lineage_file_transport_rotates_by_the_configured_size(env, tmp_path):
    from fabric.actors.observe import lineage_client, to_openlineage

    env.setenv("FABRIC_LINEAGE_FILE_MAX_BYTES", "4000")
    env.setenv("FABRIC_LINEAGE_FILE_BACKUPS", "50")
    client = lineage_client(Settings.from_env(home=str(tmp_path)))
    events = lineage_events(RECORD, EVENTS, NODES)
    client.transport.emit_many(events[:-1])  # the batched path the observer takes ...
    client.transport.emit(to_openlineage(events[-1]))  # ... and the client's own
    files = sorted((tmp_path / "lineage").iterdir())
    assert len(files) > 1 and all(f.stat().st_size <= 4000 for f in files)
    read = [json.loads(line) for f in client.transport.lines.files() for line in f.read_text().splitlines()]
    assert [e["run"]["runId"] for e in read] == [e["run"]["runId"] for e in events]
    assert [e["eventType"] for e in read] == [e["eventType"] for e in events]


def test_lineage_names_a_nodes_files_where_the_artifact_root_keeps_them_not_its_scratch(tmp_path) -> None:
    """A node off the head leaves no scratch on the head (its files went to the artifact root): lineage lists
    `<root>/<sub>/<node>/files/`, with each file's SHA-256, and a URI root lists nothing it cannot hash."""
    import hashlib

    from fabric.actors.lineage_inputs import Files

    home, root = tmp_path / "home", tmp_path / "art"
    (home / "runs" / "s1" / "n").mkdir(parents=True)
    (home / "runs" / "s1" / "n" / "scratch.tmp").write_bytes(b"scratch")  # never an output
    kept = root / "s1" / "n" / "files" / "plots" / "a.png"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"png!")
    found = Files(str(home), str(root)).artifacts("s1", "n")
    assert [(f.uri, f.sha256, f.size) for f in found] == [(str(kept), hashlib.sha256(b"png!").hexdigest(), 4)]
    assert Files(str(home), str(root)).artifacts("s1", "other") == []
    assert Files(str(home), "s3://bucket/x").artifacts("s1", "n") == []


def test_a_persisted_out_is_found_with_its_hash_and_a_plan_is_compiled_once_per_spec_and_parameters(tmp_path):
    import hashlib

    from fabric.actors.lineage_inputs import Files, plan_of
    from fabric.record import SubmissionRecord

    out = tmp_path / "art" / "s1" / "n" / "outputs" / "table.arrow"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"arrow")
    files = Files(str(tmp_path / "home"), str(tmp_path / "art"))
    found = files.output("s1", "n", "table")
    assert found is not None and (found.uri, found.sha256, found.size) == (
        str(out), hashlib.sha256(b"arrow").hexdigest(), 5)
    assert files.output("s1", "n", "other") is None and files.output("s1", "m", "table") is None

    def record(sid: str, k: int, labels: dict[str, str]) -> SubmissionRecord:
        spec = {"version": 1, "pipeline_id": "p", "nodes": [
            {"id": "a", "kind": "python_task", "entrypoint": "jobs.x:y", "params": {"k": k}}]}
        return SubmissionRecord(sid, "p", spec, {"labels": labels}, "h", "r", 0.0)

    first, again = record("s1", 1, {}), record("s2", 1, {})
    assert plan_of(again) is plan_of(first)  # another run of the same pipeline: compiled once
    other, labelled = record("s3", 2, {}), record("s4", 1, {"desk": "x"})
    assert plan_of(other) is not plan_of(first) and plan_of(labelled) is not plan_of(first)
    assert plan_of(other).nodes["a"].content_hash != plan_of(first).nodes["a"].content_hash
