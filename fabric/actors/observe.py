"""Lineage and traces leave the registry here: a Store wrapper hands every recorded event to a background
thread, which turns it into OpenLineage RunEvents (`openlineage-python`: a size-rotated file by default, HTTP by
config) and, when a submission ends, into OpenTelemetry spans over OTLP (off unless configured).

Configured by the registry's settings (FABRIC_LINEAGE*, FABRIC_OTLP_ENDPOINT: fabric/settings.py) over the
standard OPENLINEAGE_* and OTEL_* variables: a FABRIC_* one, where set, wins (`fabric.actors.observe_config`,
docs/observability.md). openlineage and opentelemetry are imported only when used.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from typing import Any

from fabric.actors.lineage_inputs import Files, node_io, plan_of
from fabric.actors.lineage_proc import LineageProcess
from fabric.actors.observe_config import (
    lineage_config,
    lineage_namespace,
    rotating_file_transport,
    trace_config,
)
from fabric.record import Event, Store, SubmissionRecord
from fabric.record.lineage import lineage_events
from fabric.record.timeline import attempt_timeline, critical_path, trace_spans
from fabric.settings import Settings
from fabric.states import EventKind, is_admin_subject

log = logging.getLogger(__name__)

QUIET_S, MAX_DELAY_S = 0.1, 2.0  # events are sent after 0.1 s without new ones, or 2 s at the latest
MAX_QUEUED = 20_000  # events waiting for the observer's thread; past this, a run's events are read back later


def lineage_view(record: SubmissionRecord, events: list[Event], config: Settings) -> list[dict[str, Any]]:
    files = Files(config.home, config.artifacts)
    return lineage_events(record, events, node_io(plan_of(record)), lineage_namespace(config), files.output,
                          files.artifacts)


def graph_view(record: SubmissionRecord, events: list[Event]) -> dict[str, Any]:
    """The DAG's shape, every attempt's queue wait and run time, and the critical path: what the UI draws."""
    plan = plan_of(record)
    spans = attempt_timeline(events)
    upstream = {n: plan.nodes[n].upstream for n in plan.order}
    return {"submission_id": record.submission_id, "pipeline_id": record.pipeline_id,
            "nodes": [{"id": n, "kind": plan.nodes[n].kind, "upstream": list(plan.nodes[n].upstream),
                       "outs": list(plan.nodes[n].result_slots), "pool": plan.nodes[n].pool,
                       "content_hash": plan.nodes[n].content_hash} for n in plan.order],
            "attempts": {n: [a.to_dict() for a in spans.get(n, [])] for n in plan.order},
            "critical_path": critical_path(upstream, spans)}


def lineage_on(settings: Settings) -> bool:
    """Is lineage configured, with its package installed (else said once, and off)?"""
    if lineage_config(settings).mode == "off":
        return False
    try:
        import openlineage.client  # noqa: F401 - the child imports it; a missing package is said here, once
    except ImportError:
        log.warning("fabric lineage is off: openlineage-python is not installed (pip install -e .[observe]); "
                    "GET /api/orch/lineage/{id} still answers, built from the record")
        return False
    return True


def lineage_client(settings: Settings) -> Any | None:
    """An OpenLineageClient for the configured transport, or None when lineage is off."""
    config = lineage_config(settings)
    if config.mode == "off":
        return None
    try:
        from openlineage.client import OpenLineageClient
    except ImportError:  # a sink must never stop the registry: without the package, lineage is off
        log.warning("fabric lineage is off: openlineage-python is not installed (pip install -e .[observe]); "
                    "GET /api/orch/lineage/{id} still answers, built from the record")
        return None

    if config.mode == "http":
        transport: dict[str, Any] = {"type": "http", "url": config.url, "endpoint": config.endpoint, "timeout": 5.0}
        if config.api_key:
            transport["auth"] = {"type": "api_key", "apiKey": config.api_key}
        return OpenLineageClient(config={"transport": transport})
    return OpenLineageClient(transport=rotating_file_transport(config))


def to_openlineage(event: dict[str, Any]) -> Any:
    """Our RunEvent dict as the client's RunEvent (facets stay plain dicts: the client serialises them as is)."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState

    return RunEvent(eventType=RunState(event["eventType"]), eventTime=event["eventTime"], producer=event["producer"],
                    run=Run(runId=event["run"]["runId"], facets=event["run"]["facets"]),
                    job=Job(namespace=event["job"]["namespace"], name=event["job"]["name"], facets={}),
                    inputs=[InputDataset(namespace=d["namespace"], name=d["name"], facets=d["facets"])
                            for d in event["inputs"]],
                    outputs=[OutputDataset(namespace=d["namespace"], name=d["name"], facets=d["facets"])
                             for d in event["outputs"]])


def send_lineage(client: Any | None, events: list[dict[str, Any]]) -> None:
    """Built lineage events through `client`'s transport, in order."""
    if not events or client is None:
        return
    # Straight to the client's transport: the client's environment and source-code facets would describe
    # the registry's process, not the node, and cost a third of the time per event.
    transport = client.transport
    if hasattr(transport, "emit_many"):
        transport.emit_many(events)
    else:
        for event in events:
            transport.emit(to_openlineage(event))


class SpanExporter:
    """Exports a finished submission's spans over OTLP/HTTP, with their recorded start and end times."""

    def __init__(self, traces_url: str, service_name: str = "fabric") -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; the exporter OTEL_EXPORTER_OTLP_*HEADERS.
        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url, timeout=5)))
        self._tracer = self._provider.get_tracer("fabric")

    def export(self, record: SubmissionRecord, events: list[Event], pools: dict[str, str | None]) -> int:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        made: dict[str, Any] = {}
        specs = trace_spans(record, events, pools)
        for spec in specs:
            context = trace.set_span_in_context(made[spec.parent]) if spec.parent else None
            span = self._tracer.start_span(spec.name, context=context, attributes=spec.attributes,
                                           start_time=int(spec.start * 1e9))
            span.set_status(Status(StatusCode.OK) if spec.ok else Status(StatusCode.ERROR, spec.message[:500]))
            made[spec.key] = span
        for spec in reversed(specs):
            made[spec.key].end(end_time=int(spec.end * 1e9))
        self._provider.force_flush(10_000)
        return len(specs)


class Observer:
    """Consumes recorded events off the engine's thread; a failing sink is logged, never felt by the run."""

    def __init__(self, store: Store, spans: SpanExporter | None, *, max_queued: int = MAX_QUEUED,
                 process: LineageProcess | None = None):
        """`spans`: traces, built here when a run ends; `process`: the lineage child that builds and sends
        lineage (fabric/actors/lineage_proc.py)."""
        self._store, self._spans, self._process = store, spans, process
        # A run's record and its nodes' pools, for its trace (compiled once, at its first event).
        self._runs: OrderedDict[str, tuple[SubmissionRecord, dict[str, str | None]]] = OrderedDict()
        # A bounded queue: when it is full, a run's events are not queued but counted, and read back from the
        # store once the queue has drained (its lineage comes late, never lost). `seq` numbers each run's
        # events as they are recorded, `fed` says how many of them were observed.
        self._queue: queue.SimpleQueue[list[tuple[int, Event]]] = queue.SimpleQueue()  # one item per put
        self._max_queued, self._queued = max_queued, 0
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self._fed: dict[str, int] = {}
        self._behind: set[str] = set()
        self.deferred = 0  # events that found the queue full (read back later)
        self._idle = threading.Event()
        self._idle.set()
        threading.Thread(target=self._loop, name="fabric-observe", daemon=True).start()

    def put(self, events: list[Event]) -> None:
        """From the engine's thread: never blocks on a sink; at most `max_queued` events wait in memory."""
        with self._lock:
            self._idle.clear()
            runs = {e.submission_id for e in events}
            if self._queued + len(events) > self._max_queued or runs & self._behind:
                if not self.deferred:
                    log.warning("fabric lineage queue full (%d events): later events are read back from the store",
                                self._queued)
                self.deferred += len(events)
                self._behind |= runs
                for e in events:
                    self._seq[e.submission_id] = self._seq.get(e.submission_id, 0) + 1
                return
            self._queued += len(events)
            numbered = []
            for e in events:
                self._seq[e.submission_id] = seq = self._seq.get(e.submission_id, 0) + 1
                numbered.append((seq - 1, e))
            self._queue.put(numbered)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every event handed over so far has been sent (tests, shutdown)."""
        started = time.monotonic()
        if not self._idle.wait(timeout):
            return False
        return self._process is None or self._process.drain(max(timeout - (time.monotonic() - started), 0.0))

    def _loop(self) -> None:
        while True:
            batches = [self._queue.get()]
            # Wait for a lull (or at most MAX_DELAY_S): in a burst of events the engine has the CPU to itself,
            # and the lineage follows a moment later. The wait is a sleep, not a get per batch: a thread woken by
            # every put would take the interpreter from the engine for each of them.
            deadline = time.monotonic() + MAX_DELAY_S
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(QUIET_S, left))
                arrived = self._take_all()
                if not arrived:
                    break
                batches += arrived
            with self._lock:
                self._queued -= sum(len(batch) for batch in batches)
            self._observe_all([numbered for batch in batches for numbered in batch])
            with self._lock:
                behind = self._queue.empty() and bool(self._behind)
            if behind:
                self._catch_up()
            with self._lock:
                if self._queue.empty() and not self._behind:
                    self._idle.set()

    def _take_all(self) -> list[list[tuple[int, Event]]]:
        taken = []
        while True:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                return taken

    def _observe_all(self, events: list[tuple[int, Event]]) -> None:
        fresh = []
        for seq, event in events:
            if seq < self._fed.get(event.submission_id, 0):
                continue  # read back from the store already
            self._fed[event.submission_id] = seq + 1
            fresh.append(event)
        if self._process is None or self._spans is not None:
            self._trace(fresh)  # before the lineage: never behind a full pipe
        if self._process is not None:
            try:
                self._ship(self._process, fresh)
            except Exception:  # noqa: BLE001 - as below: lineage must never stop the thread that feeds it
                log.exception("fabric could not hand %d events to its lineage process", len(fresh))

    def _trace(self, fresh: list[Event]) -> None:
        for event in fresh:
            try:
                self._observe(event)
            except Exception:  # noqa: BLE001 - traces must never break the run they describe
                log.exception("fabric could not build the trace of %s", event.submission_id,
                              extra={"submission_id": event.submission_id, "node_id": event.node_id})

    def _ship(self, process: LineageProcess, events: list[Event]) -> None:
        """To the lineage process: the runs' events (the kill-switch, quota use, promotions are not runs)."""
        # An attempt's cost comes after its run's end and means nothing to lineage: it would bring the run back.
        shipped = [e for e in events if not is_admin_subject(e.submission_id) and e.source != EventKind.COST]
        if shipped:
            process.send(shipped, self._store.get_submission)
        for event in shipped:  # the child forgets an ended run's builder: a resumed run is sent again
            if event.node_id is None and event.source == "RUNNING" and event.target != "RUNNING":
                process.forget(event.submission_id)

    def _catch_up(self) -> None:
        """The queue has drained: the runs whose events found it full are read back from the store, from the
        first event not observed yet (puts for them wait meanwhile, so none is observed twice or skipped)."""
        with self._lock:
            behind, self._behind = set(self._behind), set()
            self._store.flush()
            read = {sid: self._store.events(sid)[self._fed.get(sid, 0):self._seq.get(sid, 0)] for sid in behind}
        for sid, events in read.items():
            start = self._fed.get(sid, 0)
            self._observe_all([(start + i, e) for i, e in enumerate(events)])

    def _run(self, submission_id: str) -> tuple[SubmissionRecord, dict[str, str | None]] | None:
        if submission_id not in self._runs:
            record = self._store.get_submission(submission_id)
            if record is None:
                return None
            self._runs[submission_id] = (record, {n: io.pool for n, io in node_io(plan_of(record)).items()})
            while len(self._runs) > 1000:  # a submission that never ends must not hold memory forever
                self._runs.popitem(last=False)
        return self._runs[submission_id]

    def _observe(self, event: Event) -> None:
        """A run's trace, exported when it ends (the kill-switch, quota use, promotions are not runs)."""
        if is_admin_subject(event.submission_id):
            return
        found = self._run(event.submission_id)
        if found is None:
            return
        record, pools = found
        if event.node_id is None and event.source == "RUNNING" and event.target != "RUNNING":
            self._runs.pop(event.submission_id, None)
            if self._spans is not None:
                self._store.flush()
                self._spans.export(record, self._store.events(event.submission_id), pools)


class ObservedStore:
    """The registry's Store, unchanged, except that what it records is also handed to an Observer."""

    def __init__(self, inner: Store, observer: Observer) -> None:
        self._inner = inner
        self.observer = observer
        self._lock = threading.Lock()

    def append_events(self, events: list[Event]) -> None:
        with self._lock:  # the store's order is the observer's: a run's events are read back by position
            self._inner.append_events(events)
            self.observer.put(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def observed(store: Store, config: Settings) -> Store:
    """`store`, wrapped to send lineage and traces as configured (unwrapped when both are off)."""
    process = LineageProcess(config) if lineage_on(config) else None  # lineage is built off this process
    traces = trace_config(config)
    spans = None
    if traces.endpoint:
        try:
            spans = SpanExporter(traces.endpoint, traces.service_name)
        except ImportError:  # as for lineage: a missing sink is logged, never fatal
            log.warning("fabric traces are off: an OTLP endpoint is set but opentelemetry is not installed "
                        "(pip install -e .[observe])")
    if process is None and spans is None:
        return store
    return ObservedStore(store, Observer(store, spans, process=process))
