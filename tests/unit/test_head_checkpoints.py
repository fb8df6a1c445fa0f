"""Checkpoints of a node that shares no disk with the head: a pyarrow filesystem onto the node's checkpoint space
on the head (fabric/execute/headfs.py over the sink's fabric/execute/headfiles.py). Ray Train's own calls
(copy_files both ways, a marker file, listings, deletes) land under `<artifacts>/checkpoints/<sub>/<node>/` on
the head and nowhere else; the resume, the model and the heartbeat read back through it; a worker's scratch
directory goes when the node ends. The actor call is replaced by a direct one (the unit tier has no Ray)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from fabric.capability import KEY_FILE, attempt_grant, read_key
from fabric.errors import FabricError
from fabric.execute.headfiles import NodeFiles, checkpoint_space
from fabric.execute.headfs import HeadFiles
from fabric.execute.headsink import HeadSink
from fabric.execute.worker import remove_scratch
from fabric.ml.loop import MARKER_FILE, STATE_FILE, Heartbeat, latest_checkpoint, read_heartbeat

pytestmark = pytest.mark.timeout(60)

ROOT = "/worker/view/artifacts/checkpoints/s1/train"  # the node's storage path as the worker names it


class Direct(HeadFiles):
    """HeadFiles with the sink called in this process (Ray's call and its error wrapping are the only change)."""

    def _call(self, op: str, *args: Any) -> Any:
        try:
            return self.sink.checkpoint_op(self.submission_id, self.node_id, self.attempt, self.grant, op, args)
        except FileNotFoundError:
            raise
        except FabricError as exc:
            raise OSError(str(exc)) from None


def _grant(sink: HeadSink, node: str = "train", attempt: int = 1, submission: str = "s1") -> str:
    return attempt_grant(read_key(Path(sink.home) / KEY_FILE) or b"", submission, node, attempt)


def _fs(tmp_path: Path, attempt: int = 1, node: str = "train") -> tuple[pafs.FileSystem, HeadSink]:
    sink = HeadSink(str(tmp_path / "home"), str(tmp_path / "art"))
    return pafs.PyFileSystem(Direct(sink, "s1", node, attempt, _grant(sink, node, attempt), ROOT)), sink


def _checkpoint(folder: Path, epoch: int, state: bytes) -> None:
    (folder / "nested").mkdir(parents=True)
    (folder / STATE_FILE).write_bytes(state)
    (folder / "nested" / "extra.bin").write_bytes(bytes(range(256)))
    (folder / MARKER_FILE).write_text(json.dumps({"epoch": epoch, "state_bytes": len(state)}))


def test_ray_trains_calls_land_in_the_nodes_space_on_the_head_and_read_back(tmp_path: Path) -> None:
    fs, _ = _fs(tmp_path)
    head = tmp_path / "art" / "checkpoints" / "s1" / "train"
    # As Ray Train's StorageContext: the experiment dir and its validation marker, then checkpoints.
    fs.create_dir(f"{ROOT}/attempt-1")
    with fs.open_output_stream(f"{ROOT}/attempt-1/.validate_storage_marker"):
        pass
    assert fs.get_file_info(f"{ROOT}/attempt-1/.validate_storage_marker").type == pafs.FileType.File
    for epoch in (0, 1):
        local = tmp_path / f"local-{epoch}"
        _checkpoint(local, epoch, b"state" * (1000 + epoch))
        fs.create_dir(f"{ROOT}/attempt-1/checkpoint_{epoch}")
        pafs.copy_files(str(local), f"{ROOT}/attempt-1/checkpoint_{epoch}", destination_filesystem=fs)
    assert (head / "attempt-1" / "checkpoint_1" / STATE_FILE).read_bytes() == b"state" * 1001
    assert (head / "attempt-1" / "checkpoint_0" / "nested" / "extra.bin").read_bytes() == bytes(range(256))
    assert not any(p.name.endswith(".part") for p in head.rglob("*")), "a write left its temporary file"

    # The resume: the newest complete checkpoint, found and read back through the head.
    assert latest_checkpoint(ROOT, fs) == (f"{ROOT}/attempt-1/checkpoint_1", 1)
    back = tmp_path / "back"
    pafs.copy_files(f"{ROOT}/attempt-1/checkpoint_1", str(back), source_filesystem=fs)
    assert (back / STATE_FILE).read_bytes() == b"state" * 1001 and (back / "nested" / "extra.bin").exists()

    top = fs.get_file_info(pafs.FileSelector(ROOT, recursive=False))
    assert [(i.path, i.type) for i in top] == [(f"{ROOT}/attempt-1", pafs.FileType.Directory)]
    assert fs.get_file_info(pafs.FileSelector(f"{ROOT}/nope", allow_not_found=True)) == []
    with pytest.raises(FileNotFoundError):
        fs.get_file_info(pafs.FileSelector(f"{ROOT}/nope"))
    with pytest.raises(FileNotFoundError):
        fs.open_input_stream(f"{ROOT}/attempt-1/missing.bin")
    fs.move(f"{ROOT}/attempt-1/checkpoint_0", f"{ROOT}/attempt-1/old_0")
    fs.delete_dir(f"{ROOT}/attempt-1/old_0")
    assert sorted(p.name for p in (head / "attempt-1").iterdir()) == [".validate_storage_marker", "checkpoint_1"]

    # A retry (another attempt's grant) reaches the same space; the head's files are whole, so a copy is too.
    retry, _ = _fs(tmp_path, attempt=2)
    assert latest_checkpoint(ROOT, retry) == (f"{ROOT}/attempt-1/checkpoint_1", 1)


def test_a_large_file_travels_in_pieces_and_appears_only_when_closed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("fabric.execute.headfs.MAX_CHUNK_BYTES", 1000)
    fs, _ = _fs(tmp_path)
    data = bytes(range(256)) * 40  # 10 240 bytes: 11 pieces
    final = tmp_path / "art" / "checkpoints" / "s1" / "train" / "big.bin"
    stream = fs.open_output_stream(f"{ROOT}/big.bin")
    stream.write(data[:5000])
    stream.write(data[5000:])
    assert not final.exists()
    stream.close()
    assert final.read_bytes() == data
    with fs.open_input_stream(f"{ROOT}/big.bin") as source:
        assert source.read() == data


@pytest.mark.parametrize("path", ["/worker/view/artifacts/checkpoints/s1/other/x", "/etc/passwd",
                                  f"{ROOT}/../other/x", f"{ROOT}/../../s2/train/x", "/worker/view/artifacts/x"])
def test_paths_outside_the_nodes_space_are_refused_before_the_head_is_asked(tmp_path: Path, path: str) -> None:
    fs, _ = _fs(tmp_path)
    with pytest.raises(PermissionError):
        fs.open_output_stream(path).close()
    with pytest.raises(PermissionError):
        fs.get_file_info(path)
    assert not (tmp_path / "art").exists() or not any(p.is_file() for p in (tmp_path / "art").rglob("*"))


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/abs", "a//b", ".", "a/./b", "a\0b", "x" * 2000, 7])
def test_the_heads_side_refuses_names_that_leave_the_space(tmp_path: Path, name: object) -> None:
    files = NodeFiles(checkpoint_space(str(tmp_path), "s1", "train"))
    with pytest.raises(FabricError):
        files.path(name)
    with pytest.raises(FabricError):
        checkpoint_space(str(tmp_path), "../s1", "train")


def test_another_nodes_or_a_forged_grant_is_refused(tmp_path: Path) -> None:
    sink = HeadSink(str(tmp_path / "home"), str(tmp_path / "art"))
    other = _grant(sink, node="other")
    with pytest.raises(FabricError):
        sink.checkpoint_op("s1", "train", 1, other, "mkdir", ("x",))
    with pytest.raises(FabricError):
        sink.checkpoint_op("s1", "train", 1, "0" * 64, "info", (["x"],))
    with pytest.raises(FabricError, match="no checkpoint operation"):
        sink.checkpoint_op("s1", "train", 1, _grant(sink), "__init__", ("/",))
    uri = HeadSink(str(tmp_path / "home"), "s3://bucket/x")
    with pytest.raises(FabricError, match="URI"):
        uri.checkpoint_op("s1", "train", 1, _grant(sink), "mkdir", ("x",))
    assert not (tmp_path / "art").exists()


def test_the_filesystem_pickles_for_ray_trains_controller_and_workers(tmp_path: Path) -> None:
    fs, _ = _fs(tmp_path)
    again = pickle.loads(pickle.dumps(fs))
    again.create_dir(f"{ROOT}/from-a-copy")
    assert (tmp_path / "art" / "checkpoints" / "s1" / "train" / "from-a-copy").is_dir()
    assert again.equals(fs)


def test_the_heartbeat_goes_beside_the_checkpoints_on_the_head(tmp_path: Path) -> None:
    fs, _ = _fs(tmp_path)
    beat = Heartbeat(ROOT, 0, resumed_from=2, filesystem=fs)
    beat(3, 7, force=True)
    head = json.loads((tmp_path / "art/checkpoints/s1/train/train-worker-0.json").read_text())
    assert head["epoch"] == 3 and head["batch"] == 7 and head["resumed_from"] == 2
    assert read_heartbeat(ROOT, 0, fs) == head
    assert latest_checkpoint(ROOT, fs) is None  # a heartbeat is not a checkpoint


def test_the_model_loads_from_a_checkpoint_on_the_head(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from fabric.ml.loop import load_trained, save_checkpoint
    from fabric.ml.trainers import get_trainer

    params = {**get_trainer("bilstm").defaults, "trainer": "bilstm", "hidden": 4, "seq_len": 3}
    meta = {"n_features": 2, "features": ["a", "b"], "x_mean": [0.0, 0.0], "x_std": [1.0, 1.0], "y_mean": 0.0,
            "y_std": 1.0}
    model = get_trainer("bilstm").model(params, meta)
    local = tmp_path / "local"
    local.mkdir()
    save_checkpoint(local, model, torch.optim.Adam(model.parameters()), 0, [{"epoch": 0}], meta, params)
    fs, _ = _fs(tmp_path)
    pafs.copy_files(str(local), f"{ROOT}/attempt-1/checkpoint_0", destination_filesystem=fs)
    loaded, state = load_trained(f"{ROOT}/attempt-1/checkpoint_0", fs)
    assert state["history"] == [{"epoch": 0}]
    for mine, theirs in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)


def test_a_nodes_scratch_goes_and_its_submissions_when_no_other_node_is_there(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for node in ("a", "b"):
        (runs / "s1" / node / "deep").mkdir(parents=True)
        (runs / "s1" / node / "deep" / "f.bin").write_bytes(b"x")
    remove_scratch(runs / "s1" / "a")
    assert not (runs / "s1" / "a").exists() and (runs / "s1" / "b" / "deep" / "f.bin").exists()
    remove_scratch(runs / "s1" / "b")
    assert not (runs / "s1").exists() and runs.is_dir()
