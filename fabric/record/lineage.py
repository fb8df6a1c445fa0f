"""OpenLineage RunEvents of a submission, built from its recorded state-change events (pure: plain dicts).

One OpenLineage run per submission (the parent, job `<pipeline>`) and one per node attempt (job
`<pipeline>.<node>`, its parent facet naming the submission's run). A node's inputs are the upstream outs it
reads, its outputs are its own outs plus the files it left in its artifact dir; every dataset carries a
content hash: the plan's content hash of the node that made it (same code, params and inputs -> same
hash), and the SHA-256 of the bytes where a file holds them. The same builder serves the live emitter
(`fabric.actors.observe`) and `GET /api/orch/lineage/{id}`, so both tell the same story.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from fabric.record.store import Event, SubmissionRecord
from fabric.spec.mapping import parent_of

PRODUCER = "https://fabric.dev/lineage"
SCHEMA_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
FACET_SCHEMA = "https://fabric.dev/lineage/facets.json"
_RUN_IDS = uuid.UUID("6f1c3a52-94f3-4a8e-9d55-1b7c0e0f2a11")  # uuid5 namespace: stable run ids per attempt

ENDS = {"SUCCEEDED": "COMPLETE", "CACHED": "COMPLETE", "FAILED": "FAIL", "TIMED_OUT": "FAIL", "RETRYING": "FAIL",
        "CANCELLED": "ABORT", "SKIPPED": "ABORT", "QUEUED": "ABORT"}  # QUEUED from RUNNING: preempted
SUBMISSION_ENDS = {"SUCCEEDED": "COMPLETE", "FAILED": "FAIL", "TIMED_OUT": "FAIL", "CANCELLED": "ABORT"}


@dataclass(frozen=True)
class StoredFile:
    """A file behind a dataset: where it is, its SHA-256 (None where it was not read) and its size."""

    uri: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class NodeIO:
    """What lineage needs of one planned node."""

    node_id: str
    kind: str
    inputs: tuple[tuple[str, str, str], ...]  # (input name, producer node, producer's out)
    outs: tuple[str, ...]  # the values it returns (`result` when it declares none)
    content_hash: str
    pool: str | None = None
    persisted: tuple[str, ...] = ()  # the outs written to the artifact store (those a downstream node reads)


# (submission, node, out) -> the file holding that out, if it was persisted; (submission, node) -> its files.
OutputLookup = Callable[[str, str, str], StoredFile | None]
ArtifactLookup = Callable[[str, str], list[StoredFile]]


@lru_cache(maxsize=1 << 16)  # every event of a node names its run and its parent's: computed once each
def run_id(submission_id: str, node_id: str | None = None, attempt: int = 0) -> str:
    """The OpenLineage runId (a UUID) of a submission, or of one node attempt: stable, so re-reads agree."""
    key = submission_id if node_id is None else f"{submission_id}/{node_id}/{attempt}"
    return str(uuid.uuid5(_RUN_IDS, key))


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _facet(**fields: Any) -> dict[str, Any]:
    return {"_producer": PRODUCER, "_schemaURL": FACET_SCHEMA, **fields}


@dataclass
class LineageBuilder:
    """Feed it a submission's events in order; it answers the RunEvents each one means."""

    record: SubmissionRecord
    nodes: Mapping[str, NodeIO]
    namespace: str = "fabric"
    outputs: OutputLookup | None = None
    artifacts: ArtifactLookup | None = None
    _attempts: dict[str, int] = field(default_factory=dict)
    _running: set[str] = field(default_factory=set)
    _started: bool = False
    _children: dict[str, NodeIO] = field(default_factory=dict)  # a map's children, made as their events come
    # Fed from the middle of a run (a restarted lineage process): the run's START went already, and a node seen
    # ending RUNNING started before, as its event's attempt number says.
    resumed: bool = False
    # A node's input datasets: its producers ended before it started, so what they stored is known for good.
    _inputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def start(self) -> list[dict[str, Any]]:
        """The submission's START (at its creation); `feed` sends it first if nobody asked."""
        if self._started or self.resumed:
            return []
        self._started = True
        return [self._submission_event("START", self.record.created_at, "")]

    def feed(self, event: Event) -> list[dict[str, Any]]:
        out = self.start()
        if event.node_id is None:
            kind = SUBMISSION_ENDS.get(event.target)
            if kind is not None and event.source == "RUNNING":
                out.append(self._submission_event(kind, event.at, event.reason))
            return out
        node = self.nodes.get(event.node_id) or self._children.get(event.node_id)
        parent = parent_of(event.node_id) if node is None else None
        if parent is not None and parent[0] in self.nodes:  # a map's child: a job of its own, its map's inputs
            node = self._children[event.node_id] = replace(self.nodes[parent[0]], node_id=event.node_id)
        if node is None:
            return out
        if event.target == "RUNNING":
            self._attempts[node.node_id] = self._attempts.get(node.node_id, 0) + 1
            self._running.add(node.node_id)
            out.append(self._node_event("START", node, event))
        elif event.target == "CACHED":
            self._attempts[node.node_id] = self._attempts.get(node.node_id, 0) + 1
            out += [self._node_event("START", node, event), self._node_event("COMPLETE", node, event)]
        elif event.target in ENDS and (node.node_id in self._running or self.resumed and event.source == "RUNNING"):
            if node.node_id not in self._running:  # it started under an earlier lineage process
                self._attempts[node.node_id] = max(event.attempt, 1)
            self._running.discard(node.node_id)
            out.append(self._node_event(ENDS[event.target], node, event))
        return out

    # -- building ------------------------------------------------------------------------------

    def _job(self, node_id: str | None = None) -> dict[str, Any]:
        name = self.record.pipeline_id if node_id is None else f"{self.record.pipeline_id}.{node_id}"
        return {"namespace": self.namespace, "name": name, "facets": {}}

    def _submission_event(self, kind: str, at: float, reason: str) -> dict[str, Any]:
        facets: dict[str, Any] = {"fabric_submission": _facet(
            submissionId=self.record.submission_id, team=self.record.team, labels=dict(self.record.labels),
            planHash=self.record.plan_hash, params=dict(self.record.runtime_params.get("params") or {}))}
        if kind == "FAIL" and reason:
            facets["errorMessage"] = _facet(message=reason, programmingLanguage="python")
        return self._event(kind, at, {"runId": run_id(self.record.submission_id), "facets": facets}, self._job(),
                           [], [])

    def _node_event(self, kind: str, node: NodeIO, event: Event) -> dict[str, Any]:
        sid = self.record.submission_id
        attempt = self._attempts.get(node.node_id, 1)
        facets: dict[str, Any] = {
            "parent": {**_facet(), "run": {"runId": run_id(sid)},
                       "job": {"namespace": self.namespace, "name": self.record.pipeline_id}},
            "fabric_attempt": _facet(submissionId=sid, nodeId=node.node_id, kind=node.kind, attempt=attempt,
                                     state=event.target, reason=event.reason, team=self.record.team,
                                     pool=node.pool, contentHash=node.content_hash),
        }
        if kind == "FAIL":
            facets["errorMessage"] = _facet(message=event.reason or event.target, programmingLanguage="python")
        inputs = self._inputs.get(node.node_id)
        if inputs is None:
            wired = [(self.nodes[producer], out, name) for name, producer, out in node.inputs
                     if producer in self.nodes]
            inputs = [self._dataset(producer, out, name) for producer, out, name in wired]
            unseen = [d for d, (producer, out, _) in zip(inputs, wired, strict=True)
                      if out in producer.persisted and not d["facets"]["fabric_output"]["uri"]]
            if self.outputs is None or not unseen:
                self._inputs[node.node_id] = inputs  # every file it reads was found: known for good
        # A node's own outs exist only once it succeeded: no need to look for their files before.
        outputs = [self._dataset(node, out, look=kind == "COMPLETE") for out in node.outs]
        if kind == "COMPLETE" and self.artifacts is not None:
            outputs += [_file_dataset(f, node) for f in self.artifacts(sid, node.node_id)]
        return self._event(kind, event.at, {"runId": run_id(sid, node.node_id, attempt), "facets": facets},
                           self._job(node.node_id), inputs, outputs)

    def _dataset(self, producer: NodeIO, out: str, as_input: str | None = None, look: bool = True) -> dict[str, Any]:
        sid = self.record.submission_id
        stored = (self.outputs(sid, producer.node_id, out)
                  if self.outputs is not None and look and out in producer.persisted else None)
        facet = _facet(producer=producer.node_id, out=out, contentHash=producer.content_hash,
                       uri=stored.uri if stored else None, sha256=stored.sha256 if stored else None,
                       storage="artifact store" if stored else "object store")
        if as_input is not None:
            facet["input"] = as_input
        return {"namespace": self.namespace, "name": f"{sid}/{producer.node_id}.{out}",
                "facets": {"datasetVersion": _facet(datasetVersion=producer.content_hash), "fabric_output": facet}}

    def _event(self, kind: str, at: float, run: dict[str, Any], job: dict[str, Any], inputs: list[dict[str, Any]],
               outputs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"eventType": kind, "eventTime": iso(at), "producer": PRODUCER, "schemaURL": SCHEMA_URL,
                "run": run, "job": job, "inputs": inputs, "outputs": outputs}


def _file_dataset(stored: StoredFile, node: NodeIO) -> dict[str, Any]:
    facets: dict[str, Any] = {"fabric_artifact": _facet(node=node.node_id, sha256=stored.sha256, size=stored.size)}
    if stored.sha256:
        facets["datasetVersion"] = _facet(datasetVersion=stored.sha256)
    return {"namespace": "file", "name": stored.uri, "facets": facets}


def lineage_events(record: SubmissionRecord, events: Iterable[Event], nodes: Mapping[str, NodeIO],
                   namespace: str = "fabric", outputs: OutputLookup | None = None,
                   artifacts: ArtifactLookup | None = None) -> list[dict[str, Any]]:
    """Every RunEvent of one submission, in the order its events happened."""
    builder = LineageBuilder(record, nodes, namespace, outputs, artifacts)
    result = builder.start()
    for event in events:
        result += builder.feed(event)
    return result
