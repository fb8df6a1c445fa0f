"""Where a train node's checkpoints go: under the artifact store, keyed by submission and node; an object-store
URI keeps its query (`?endpoint_override=`) at the end, so Ray Train and the resume read the same endpoint."""

from __future__ import annotations

from pathlib import Path

from fabric.ml.loop import MARKER_FILE, STATE_FILE, latest_checkpoint
from fabric.ml.ray_runs import checkpoint_storage
from fabric.plan.call import NodeCall


def _call(artifacts: str) -> NodeCall:
    return NodeCall(submission_id="s1", pipeline_id="p", node_id="train", attempt=1, kind="train", entrypoint=None,
                    params={}, input_names=(), result_slots=(), declared_outs=(), home="/h", artifacts=artifacts)


def test_an_object_store_uri_keeps_its_query_after_the_checkpoint_path(tmp_path):
    uri = "s3://bucket/fabric?endpoint_override=http://127.0.0.1:9000&scheme=http"
    assert checkpoint_storage(_call(uri), tmp_path) == \
        "s3://bucket/fabric/checkpoints/s1/train?endpoint_override=http://127.0.0.1:9000&scheme=http"
    assert checkpoint_storage(_call("gs://b/root/"), tmp_path) == "gs://b/root/checkpoints/s1/train"
    assert checkpoint_storage(_call(str(tmp_path / "art")), tmp_path) == f"{tmp_path}/art/checkpoints/s1/train"


def test_the_newest_complete_local_checkpoint_is_found(tmp_path: Path):
    storage = tmp_path / "checkpoints"
    for epoch, complete in ((0, True), (1, True), (2, False)):
        folder = storage / "attempt-1" / f"checkpoint_{epoch}"
        folder.mkdir(parents=True)
        (folder / STATE_FILE).write_bytes(b"x" * 10)
        (folder / MARKER_FILE).write_text(f'{{"epoch": {epoch}, "state_bytes": {10 if complete else 99}}}')
    assert latest_checkpoint(str(storage)) == (str(storage / "attempt-1" / "checkpoint_1"), 1)
