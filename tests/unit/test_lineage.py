"""Lineage, timelines, traces and the DAG pictures, from recorded events: no Ray. The transports are real:
OpenLineage's HTTP transport and the OTLP/HTTP span exporter post to a stdlib server on loopback."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fabric.cli import graph_view
from fabric.record import Event, SubmissionRecord
from fabric.record.lineage import NodeIO, StoredFile, lineage_events, run_id
from fabric.record.timeline import attempt_timeline, critical_path, trace_spans
from fabric.settings import Settings

pytestmark = pytest.mark.timeout(60)

SID = "sub-1"
RECORD = SubmissionRecord(SID, "pipe", {}, {}, "plan-h", "req-h", 100.0, team="research", labels={"p": "x"})
NODES = {
    "a": NodeIO("a", "python_task", (), ("x",), "hash-a", "cpu", ("x",)),
    "b": NodeIO("b", "python_task", (("x", "a", "x"),), ("result",), "hash-b"),
    "c": NodeIO("c", "python_task", (("x", "a", "x"),), ("result",), "hash-c"),
    "d": NodeIO("d", "sql", (("left", "b", "result"), ("right", "c", "result")), ("result",), "hash-d"),
}


def E(node, source, target, at, reason=""):  # noqa: N802 - reads like a table row
    return Event(SID, node, source, target, at, 0, reason)


EVENTS = [
    E("a", "PENDING", "QUEUED", 100.0), E("a", "QUEUED", "RUNNING", 100.5), E("a", "RUNNING", "SUCCEEDED", 102.0),
    E("b", "PENDING", "QUEUED", 102.0), E("c", "PENDING", "QUEUED", 102.0),
    E("b", "QUEUED", "RUNNING", 102.1), E("c", "QUEUED", "RUNNING", 103.0),
    E("b", "RUNNING", "SUCCEEDED", 103.0),
    E("c", "RUNNING", "RETRYING", 104.0, "RuntimeError: planned"), E("c", "RETRYING", "QUEUED", 105.0),
    E("c", "QUEUED", "RUNNING", 105.5), E("c", "RUNNING", "SUCCEEDED", 107.0),
    E("d", "PENDING", "QUEUED", 107.0), E("d", "QUEUED", "RUNNING", 107.2),
    E("d", "RUNNING", "FAILED", 108.0, "ValueError: bad join"),
    E(None, "RUNNING", "FAILED", 108.0, "node d failed"),
]


def test_run_events_per_attempt_with_parent_inputs_outputs_and_hashes():
    files = {("a", "x"): StoredFile("/art/sub-1/a/outputs/x.arrow", "f" * 64, 10)}
    events = lineage_events(RECORD, EVENTS, NODES, outputs=lambda s, n, o: files.get((n, o)),
                            artifacts=lambda s, n: [StoredFile(f"/runs/{s}/{n}/plot.png", "e" * 64, 5)])
    kinds = [(e["job"]["name"], e["eventType"]) for e in events]
    assert kinds[0] == ("pipe", "START") and kinds[-1] == ("pipe", "FAIL")
    assert kinds.count(("pipe.c", "START")) == 2 and ("pipe.c", "FAIL") in kinds and ("pipe.c", "COMPLETE") in kinds
    assert ("pipe.d", "FAIL") in kinds and ("pipe.a", "COMPLETE") in kinds
    c_runs = {e["run"]["runId"] for e in events if e["job"]["name"] == "pipe.c"}
    assert c_runs == {run_id(SID, "c", 1), run_id(SID, "c", 2)}  # one OpenLineage run per attempt
    parent = run_id(SID)
    assert all(e["run"]["facets"]["parent"]["run"]["runId"] == parent for e in events if e["job"]["name"] != "pipe")
    [d_fail] = [e for e in events if e["job"]["name"] == "pipe.d"][-1:]
    assert d_fail["run"]["facets"]["errorMessage"]["message"] == "ValueError: bad join"
    assert {i["name"] for i in d_fail["inputs"]} == {"sub-1/b.result", "sub-1/c.result"}
    [a_done] = [e for e in events if e["job"]["name"] == "pipe.a" and e["eventType"] == "COMPLETE"]
    [out_x, artifact] = a_done["outputs"]
    assert out_x["facets"]["datasetVersion"]["datasetVersion"] == "hash-a"
    assert out_x["facets"]["fabric_output"]["uri"].endswith("x.arrow") and out_x["facets"]["fabric_output"]["sha256"]
    assert artifact["namespace"] == "file" and artifact["facets"]["datasetVersion"]["datasetVersion"] == "e" * 64
    attempt = a_done["run"]["facets"]["fabric_attempt"]
    assert (attempt["team"], attempt["pool"], attempt["attempt"]) == ("research", "cpu", 1)
    # Read twice, told the same: run ids are stable.
    assert lineage_events(RECORD, EVENTS, NODES)[3]["run"]["runId"] == events[3]["run"]["runId"]


def test_timeline_shows_queue_wait_and_run_time_and_the_critical_path():
    spans = attempt_timeline(EVENTS)
    [c1, c2] = spans["c"]
    assert (c1.queued_at, c1.started_at, c1.ended_at, c1.outcome) == (102.0, 103.0, 104.0, "RETRYING")
    assert (c2.queued_at, c2.started_at, c2.outcome) == (105.0, 105.5, "SUCCEEDED")
    upstream = {n: tuple(p for _, p, _ in io.inputs) for n, io in NODES.items()}
    assert critical_path(upstream, spans) == ["a", "c", "d"]  # c (retried) ended after b: it held d back


def test_trace_spans_nest_attempts_under_nodes_under_the_submission():
    specs = trace_spans(RECORD, EVENTS, {"a": "cpu"})
    root = specs[0]
    assert root.parent is None and not root.ok and (root.start, root.end) == (100.0, 108.0)
    by_key = {s.key: s for s in specs}
    assert by_key["sub-1/c"].parent == SID and by_key["sub-1/c/2"].parent == "sub-1/c"
    assert by_key["sub-1/c/1"].attributes["fabric.outcome"] == "RETRYING"
    assert by_key["sub-1/a/1"].attributes["fabric.pool"] == "cpu"
    assert by_key["sub-1/a/1"].attributes["fabric.team"] == "research"
    assert by_key["sub-1/a/1"].attributes["fabric.queue_wait_s"] == pytest.approx(0.5)


def test_an_attempts_cost_event_does_not_become_its_nodes_state_in_the_trace():
    from fabric.states import EventKind

    costed = [*EVENTS[:3], E("a", "cost", "cost", 102.0, "0.25")]  # as stored: EventKind.COST's value
    assert costed[-1].source == EventKind.COST  # the engine records cost last
    node = {s.key: s for s in trace_spans(RECORD, costed)}["sub-1/a"]
    assert node.attributes["fabric.state"] == "SUCCEEDED" and node.ok and node.message == ""


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

    def log_message(self, *_):
        pass


@pytest.fixture
def sink():
    _Sink.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Sink.received
    server.shutdown()


def test_lineage_goes_to_an_http_endpoint_through_the_openlineage_client(sink, tmp_path):
    from fabric.actors.observe import lineage_client, to_openlineage

    url, received = sink
    client = lineage_client(Settings.from_env({"FABRIC_LINEAGE": "http", "FABRIC_LINEAGE_URL": url,
                                               "FABRIC_LINEAGE_API_KEY": "s3cret"}, home=str(tmp_path)))
    events = lineage_events(RECORD, EVENTS, NODES)
    for event in events:
        client.emit(to_openlineage(event))
    assert len(received) == len(events)
    path, headers, body = received[1]
    assert path == "/api/v1/lineage" and headers["Authorization"] == "Bearer s3cret"
    sent = json.loads(body)
    assert sent["run"]["runId"] == events[1]["run"]["runId"] and sent["eventType"] == events[1]["eventType"]
    assert sent["run"]["facets"]["parent"]["run"]["runId"] == run_id(SID)


def test_lineage_is_off_when_configured_off(tmp_path):
    from fabric.actors.observe import lineage_client

    assert lineage_client(Settings.from_env({"FABRIC_LINEAGE": "off"}, home=str(tmp_path))) is None


def test_without_the_observe_extra_the_registry_still_starts_with_lineage_and_traces_off(monkeypatch, tmp_path):
    """Where the `observe` extra is not installed (scripts/ml_example.sh, a plain `pip install -e .`), a
    missing sink package is logged, never fatal to the registry."""
    import sys

    from fabric.actors.observe import observed

    for module in ("openlineage.client", "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as when not installed
    store = object()
    config = Settings.from_env({"FABRIC_OTLP_ENDPOINT": "http://127.0.0.1:9"}, home=str(tmp_path))
    assert observed(store, config) is store  # unwrapped: both sinks are off


def test_spans_go_over_otlp_with_parents_and_attributes(sink):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from fabric.actors.observe import SpanExporter

    url, received = sink
    assert SpanExporter(url + "/v1/traces").export(RECORD, EVENTS, {"a": "cpu"}) == len(trace_spans(RECORD, EVENTS))
    spans = []
    for path, _, body in received:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        spans += [s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
    by_name = {s.name: s for s in spans}
    root, node_c, attempt = by_name["submission pipe"], by_name["node c"], by_name["attempt c#2"]
    assert root.parent_span_id == b"" and node_c.parent_span_id == root.span_id
    assert attempt.parent_span_id == node_c.span_id and len({s.trace_id for s in spans}) == 1
    attrs = {a.key: a.value for a in attempt.attributes}
    assert attrs["fabric.attempt"].int_value == 2 and attrs["fabric.team"].string_value == "research"
    assert attempt.start_time_unix_nano == int(105.5e9) and attempt.end_time_unix_nano == int(107.0e9)


GRAPH = {"submission_id": SID, "pipeline_id": "pipe", "critical_path": ["a", "c", "d"],
         "nodes": [{"id": n, "kind": io.kind, "upstream": [p for _, p, _ in io.inputs]} for n, io in NODES.items()],
         "attempts": {n: [a.to_dict() for a in spans] for n, spans in attempt_timeline(EVENTS).items()}}
STATUS = {"state": "FAILED", "nodes": [{"node_id": "a", "state": "SUCCEEDED"}, {"node_id": "b", "state": "SUCCEEDED"},
                                       {"node_id": "c", "state": "SUCCEEDED"}, {"node_id": "d", "state": "FAILED"}]}


def test_graph_layers_svg_and_terminal_table():
    from rich.console import Console

    assert graph_view.layers(GRAPH["nodes"]) == [["a"], ["b", "c"], ["d"]]
    picture = graph_view.svg(GRAPH, STATUS)
    assert picture.startswith("<svg") and picture.count("<rect") == 5  # background + 4 nodes
    assert 'fill="#dc2626"' in picture and picture.count('stroke="#d4a017"') == 5  # 3 nodes + 2 edges in gold
    console = Console(width=140, record=True)
    console.print(graph_view.table(GRAPH, STATUS))
    text = console.export_text()
    assert "★ c" in text and "← b, c" in text and "FAILED" in text and "2" in text


def test_graph_png(tmp_path):
    path = tmp_path / "g.png"
    graph_view.png(GRAPH, STATUS, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
