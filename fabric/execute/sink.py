"""How a worker's node output reaches the durable record on the head: logs, node files, resume outputs.

The decision is "where is the artifact root": a URI (s3://, gs://, ...) is shared storage, and the worker
writes files and outputs there itself. A local path is the *head's* disk: a worker on the head writes it
directly; a worker on any other node sends the bytes, in bounded chunks, to a small detached actor pinned
to the head (`HeadSink`, fabric/execute/headsink.py), which writes them there. Logs always go to the head's
FABRIC_HOME the same way, live, in chunks, so `fabric logs -f` follows a running node.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from fabric.capability import attempt_proof, impostor, new_nonce
from fabric.execute.headsink import MAX_CHUNK_BYTES, HeadSink, chunks, log_file
from fabric.execute.outputs import MANIFEST, encode_outputs, persist_outputs, publish_files, write_output_file
from fabric.execute.sealed import sealed
from fabric.plan.call import NodeCall

HEAD_RESOURCE = "node:__internal_head__"  # as fabric.actors.HEAD_RESOURCE (that layer sits above this one)
WAIT_S = 120.0  # a bounded wait for the head to confirm what a node sent


def sink_name(home: str, artifacts: str) -> str:
    return "fabric-sink-" + hashlib.sha256(f"{home}\0{artifacts}".encode()).hexdigest()[:16]


@lru_cache(maxsize=8)
def _sink(home: str, artifacts: str, namespace: str) -> Any:
    import ray

    return ray.remote(sealed(HeadSink)).options(
        name=sink_name(home, artifacts), namespace=namespace, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_concurrency=8, max_restarts=-1, max_task_retries=-1,  # writes at offsets: safe twice
        resources={HEAD_RESOURCE: 0.001},
    ).remote(home, artifacts)


def start_head_sink(home: str, artifacts: str, namespace: str) -> None:
    """Start the head's sink before the first node off the head needs it (the registry does at its start on a
    multi-node cluster, the dispatcher at the first such node). Started by that node instead, it came up only
    after every early node had blocked in its proof, each holding its CPU while Ray started worker after
    worker: tens of seconds on a busy cluster, past a short max_runtime."""
    _sink(home, artifacts, namespace)  # cached: one GCS call per sink and process


_proven: set[Any] = set()  # sink actor ids this worker process has seen prove themselves


def _checked(sink: Any, call: NodeCall) -> Any:
    """`sink` once it proved it can make this attempt's grant: a squatter under the sink's name gets no log, file
    or grant. Once per actor and worker process (a restarted actor keeps its id, and no one else can take it)."""
    import ray

    if sink._actor_id in _proven:
        return sink
    nonce = new_nonce()
    try:
        answer = ray.get(sink.prove.remote(call.submission_id, call.node_id, call.attempt, nonce), timeout=WAIT_S)
    except (AttributeError, ray.exceptions.RayTaskError):
        answer = None
    if answer != attempt_proof(call.grant, nonce):
        raise impostor(sink_name(call.home, call.artifacts), "it could not prove it holds the head's control key")
    _proven.add(sink._actor_id)
    return sink


@lru_cache(maxsize=1)
def _on_head() -> bool:
    """Whether this worker runs on the head node (asked once per worker process: one GCS call), where
    the registry's FABRIC_HOME is this machine's own disk and no actor is needed."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    return any(node["NodeID"] == me and HEAD_RESOURCE in node.get("Resources", {}) for node in ray.nodes())


class HeadLink:
    """One attempt's way to the head: direct file writes where this worker shares the head's disk
    (no Ray context, or the same Ray node), the head's sink actor otherwise."""

    def __init__(self, call: NodeCall) -> None:
        self.call = call
        self.sink: Any = None
        self._refs: list[Any] = []
        if call.control is not None:
            import ray

            if ray.is_initialized() and not _on_head():
                self.sink = _checked(_sink(call.home, call.artifacts, call.control[1]), call)

    @property
    def remote(self) -> bool:
        return self.sink is not None

    def log_path(self) -> str:
        return str(log_file(self.call.home, self.call.submission_id, self.call.node_id, self.call.attempt))

    def ship_log(self, offset: int, data: bytes) -> None:
        c = self.call
        if self.sink is None:
            path = Path(self.log_path())
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
            return
        for start, piece in chunks(data):
            self._refs.append(self.sink.append_log.remote(c.submission_id, c.node_id, c.attempt, c.grant,
                                                          offset + start, piece))

    def wait_logs(self) -> None:
        """The log is whole on the head before the attempt reports (bounded: a lost head is not our hang)."""
        import ray

        refs, self._refs = self._refs, []
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=WAIT_S)

    def _send(self, files: list[tuple[str, Any]]) -> None:
        """Whole files (name under the node's space, bytes) to the head: all chunks, then the commits."""
        import ray

        c = self.call
        assert self.sink is not None
        ray.get([self.sink.put_chunk.remote(c.submission_id, c.node_id, c.attempt, c.grant, name, offset, piece)
                 for name, data in files for offset, piece in chunks(data, MAX_CHUNK_BYTES)], timeout=WAIT_S)
        ray.get([self.sink.commit.remote(c.submission_id, c.node_id, c.attempt, c.grant, name,
                                         memoryview(data).nbytes)
                 for name, data in files], timeout=WAIT_S)

    def persist_outputs(self, values: Mapping[str, Any]) -> None:
        c = self.call
        if self.sink is None or "://" in c.artifacts:
            persist_outputs(c.artifacts, c.submission_id, c.node_id, values)
            return
        encoded = [(f"outputs/{name}", data) for name, data in encode_outputs(values)]
        self._send([item for item in encoded if not item[0].endswith(MANIFEST)])
        self._send([item for item in encoded if item[0].endswith(MANIFEST)])  # last: its presence means whole

    def persist_pack(self, name: str, data: bytes) -> None:
        """One pack of map children's outputs (fabric/execute/packs.py), under this attempt's node."""
        c = self.call
        if self.sink is None or "://" in c.artifacts:
            write_output_file(c.artifacts, c.submission_id, c.node_id, name, data)
            return
        self._send([(f"outputs/{name}", data)])

    def checkpoint_fs(self, root: str) -> Any:
        """A pyarrow filesystem onto the node's checkpoint space on the head (its paths under `root`), where this
        worker is off the head and the artifact root is the head's disk; None where the root is shared (this is
        the head, or the root is a URI that every node reaches)."""
        if self.sink is None or "://" in self.call.artifacts:
            return None
        from fabric.execute.headfs import head_filesystem

        c = self.call
        return head_filesystem(self.sink, c.submission_id, c.node_id, c.attempt, c.grant, root)

    def publish_files(self, local_dir: Path) -> None:
        c = self.call
        if self.sink is None or "://" in c.artifacts:
            publish_files(c.artifacts, c.submission_id, c.node_id, local_dir)
            return
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            name = path.relative_to(local_dir).as_posix()
            try:  # one file at a time: a large artifact dir never sits in memory whole
                self._send([(f"files/{name}", path.read_bytes())])
            except Exception as exc:  # noqa: BLE001 - as publish_files: the node's own result matters more
                print(f"fabric: could not send {name!r} of the artifact dir to the head: {exc}")


__all__ = ["HeadLink", "sink_name"]
