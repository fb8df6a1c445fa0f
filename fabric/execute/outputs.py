"""Node outputs persisted to the artifact store, so that a resumed run does not recompute them.

Layout under the artifact root (a local dir or any pyarrow.fs URI: s3://, gs://, ...):
    <root>/<submission>/metrics.json                  the submission's report, written when it ends
    <root>/<submission>/<node>/files/...              what the node wrote to its artifact dir
    <root>/<submission>/<node>/outputs/<out>.arrow   one Arrow IPC file per table output
    <root>/<submission>/<node>/outputs/outputs.pkl   every other value, written last: its presence
                                                      means the node's outputs are complete
    <root>/<submission>/<child>/outputs/pack-*.pack  the manifests of many map children that ran in one
                                                      Ray task (fabric/execute/packs.py)
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from fabric.execute.packs import forget, packed, read_packed
from fabric.execute.storefs import filesystem as _fs
from fabric.execute.untrusted import safe_loads

MANIFEST = "outputs.pkl"


def outputs_dir(root: str, submission_id: str, node_id: str) -> str:
    return f"{root.rstrip('/')}/{submission_id}/{node_id}/outputs"


def encode_outputs(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The files that hold `values`, as (name under outputs/, bytes-like), the manifest always last."""
    import pyarrow as pa

    files: list[tuple[str, Any]] = []
    manifest: dict[str, tuple[str, Any]] = {}
    for name, value in values.items():
        if isinstance(value, pa.Table):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_file(sink, value.schema) as writer:
                writer.write_table(value)
            files.append((f"{name}.arrow", sink.getvalue()))
            manifest[name] = ("arrow", f"{name}.arrow")
        else:
            manifest[name] = ("value", value)
    try:
        blob = pickle.dumps(manifest, protocol=5)
    except Exception:  # noqa: BLE001 - lambdas, closures: the same fallback Ray itself uses
        from ray import cloudpickle

        blob = cloudpickle.dumps(manifest)
    files.append((MANIFEST, blob))
    return files


def persist_outputs(root: str, submission_id: str, node_id: str, values: Mapping[str, Any]) -> None:
    """Write `values`; the manifest goes last (atomically where the filesystem can rename)."""
    files = encode_outputs(values)
    for name, data in files[:-1]:  # each table's Arrow file, written in place
        write_output_file(root, submission_id, node_id, name, data, atomic=False)
    write_output_file(root, submission_id, node_id, *files[-1])  # the manifest


def write_output_file(root: str, submission_id: str, node_id: str, name: str, data: Any, *,
                      atomic: bool = True) -> None:
    """One whole file under the node's outputs/; `atomic`: written aside, then moved into place (a manifest, a
    pack: fabric/execute/packs.py). Plain os calls on a local root: pyarrow's local filesystem costs more than a
    no-op node."""
    written = f".{name}.{uuid.uuid4().hex}" if atomic else name
    if "://" not in root:
        base = outputs_dir(root, submission_id, node_id)
        os.makedirs(base, exist_ok=True)
        with open(f"{base}/{written}", "wb") as out:
            out.write(data)
        if atomic:
            os.replace(f"{base}/{written}", f"{base}/{name}")
        return
    fs, base = _fs(outputs_dir(root, submission_id, node_id))
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/{written}") as out:
        out.write(data)
    if atomic:
        fs.move(f"{base}/{written}", f"{base}/{name}")


def files_dir(root: str, submission_id: str, node_id: str) -> str:
    return f"{root.rstrip('/')}/{submission_id}/{node_id}/files"


def publish_files(root: str, submission_id: str, node_id: str, local_dir: Any) -> None:
    """Copy a node's local artifact dir into the artifact store (after every attempt, so a failed attempt's
    files are there to look at too). A failure to copy is logged into the node's log, never fatal."""
    from pyarrow import fs as pafs

    try:
        fs, base = _fs(files_dir(root, submission_id, node_id))
        fs.create_dir(base, recursive=True)
        pafs.copy_files(str(local_dir), base, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    except Exception as exc:  # noqa: BLE001 - the node's own result matters more than its copy
        print(f"fabric: could not copy the artifact dir to {root}: {exc}")


def copy_node_files(root: str, source: tuple[str, str], target: tuple[str, str]) -> int:
    """A CACHED node gets the files of the node it reuses, so its artifact dir is there like any node's."""
    from pyarrow import fs as pafs

    fs, src = _fs(files_dir(root, *source))
    if fs.get_file_info(src).type != pafs.FileType.Directory:
        return 0
    _, dst = _fs(files_dir(root, *target))
    copied = 0
    for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        path = f"{dst}/{info.path[len(src):].lstrip('/')}"
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_input_stream(info.path) as reader, fs.open_output_stream(path) as out:
            out.write(reader.read())
        copied += 1
    return copied


def has_outputs(root: str, submission_id: str, node_id: str, *, fresh: bool = False) -> bool:
    """Whether a node's outputs are on record: its own manifest, or (a map's child) its blob in a pack (`fresh`:
    packs written this very second count too, see packs.packed)."""
    if "://" not in root:  # plain os: a resume asks this of each of a map's children
        if os.path.isfile(f"{outputs_dir(root, submission_id, node_id)}/{MANIFEST}"):
            return True
    else:
        from pyarrow import fs as pafs

        fs, base = _fs(outputs_dir(root, submission_id, node_id))
        if fs.get_file_info(f"{base}/{MANIFEST}").type == pafs.FileType.File:
            return True
    return packed(root, submission_id, node_id, fresh=fresh) is not None


def load_outputs(root: str, submission_id: str, node_id: str, names: Sequence[str]) -> tuple[Any, ...] | Any:
    """The persisted values of `names`, in order (a single value when one name is asked for). It unpickles what a
    node made: never on the head (RayBackend.load reads a local root there with `read_output_files`)."""
    return decode_outputs(read_output_files(root, submission_id, node_id, names), names)


def read_output_files(root: str, submission_id: str, node_id: str, names: Sequence[str]
                      ) -> tuple[bytes, dict[str, bytes]]:
    """The bytes behind `names`, unopened: the manifest and each name's Arrow file where there is one. This runs
    on the head for a local root, beside the control key, so it reads and never unpickles."""
    from pyarrow import fs as pafs

    fs, base = _fs(outputs_dir(root, submission_id, node_id))
    try:
        with fs.open_input_stream(f"{base}/{MANIFEST}") as source:
            manifest = source.read()
    except OSError:  # not found (S3 says so as a plain OSError): a map child's may be in a pack
        location = packed(root, submission_id, node_id)
        if location is None:
            raise
        return read_packed(root, location), {}  # a map child that ran in a pack: no tables (those are alone)
    tables: dict[str, bytes] = {}
    for name in names:
        path = f"{base}/{name}.arrow"
        if "/" not in name and fs.get_file_info(path).type == pafs.FileType.File:
            with fs.open_input_stream(path) as source:
                tables[name] = source.read()
    return manifest, tables


def decode_outputs(files: tuple[bytes, dict[str, bytes]], names: Sequence[str]) -> tuple[Any, ...] | Any:
    """The values of `names` from `read_output_files`' bytes (a single value when one name is asked for): runs
    where tenant code may run, since a value is a node's pickle."""
    import pyarrow as pa

    blob, tables = files
    manifest = pickle.loads(blob)
    values = []
    for name in names:
        how, payload = manifest[name]
        if how == "arrow":
            values.append(pa.ipc.open_file(pa.BufferReader(tables[name])).read_all())
        else:
            values.append(payload)
    return values[0] if len(values) == 1 else tuple(values)


def save_code(root: str, submission_id: str, code: Mapping[str, bytes]) -> None:
    """Notebook functions of a submission (entrypoint -> pickled function), kept so a resumed run has them."""
    fs, base = _fs(f"{root.rstrip('/')}/{submission_id}")
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/code.pkl") as out:
        out.write(pickle.dumps(dict(code), protocol=5))


def load_code(root: str, submission_id: str) -> dict[str, bytes]:
    from pyarrow import fs as pafs

    fs, base = _fs(f"{root.rstrip('/')}/{submission_id}")
    if fs.get_file_info(f"{base}/code.pkl").type != pafs.FileType.File:
        return {}
    with fs.open_input_stream(f"{base}/code.pkl") as source:
        # Read by the registry: entrypoint -> bytes, nothing else is built (a node may write to the artifact store).
        code = safe_loads(source.read())
    if not isinstance(code, dict) or not all(isinstance(k, str) and isinstance(v, bytes) for k, v in code.items()):
        raise ValueError(f"{base}/code.pkl is not fabric's: entrypoint -> pickled function bytes")
    return code


def remove_tree(root: str, submission_id: str) -> int:
    """Delete `<root>/<submission_id>` and everything under it; returns how many files went."""
    from pyarrow import fs as pafs

    fs, base = _fs(f"{root.rstrip('/')}/{submission_id}")
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return 0
    files = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if i.type == pafs.FileType.File]
    fs.delete_dir(base)
    forget(root, submission_id)
    return len(files)


_reports: Any = None
_writing: dict[tuple[str, str], Any] = {}  # (root, submission) -> the future of its report still being written
REPORT_WAIT_S = 10.0


def start_report(root: str, submission_id: str, status_json: bytes) -> None:
    """Write the submission's metrics.json in the background (one writer thread: the engine loop never waits)."""
    global _reports
    if _reports is None:
        from concurrent.futures import ThreadPoolExecutor

        _reports = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fabric-report")
    future = _reports.submit(_write_report_quietly, root, submission_id, status_json)
    _writing[(root, submission_id)] = future
    future.add_done_callback(lambda done: _writing.pop((root, submission_id), None) if _writing.get(
        (root, submission_id)) is done else None)


def report_written(root: str, submission_id: str, timeout: float = REPORT_WAIT_S) -> None:
    """Return once the submission's report, if one is being written, is on record (at most `timeout`): a run
    read right after it ended (`wait()`, then its artifacts) finds its metrics.json."""
    from concurrent.futures import TimeoutError as FutureTimeout

    future = _writing.get((root, submission_id))
    if future is not None:
        try:
            future.result(timeout=timeout)
        except FutureTimeout:
            pass


def _write_report_quietly(root: str, submission_id: str, status_json: bytes) -> None:
    try:
        write_report(root, submission_id, status_json)
    except Exception:  # noqa: BLE001 - a report is a by-product: it must never hurt the run
        import logging

        logging.getLogger(__name__).exception("fabric could not write the report of %s", submission_id)


def write_report(root: str, submission_id: str, status_json: bytes) -> dict[str, Any]:
    """`<root>/<submission>/metrics.json`: the run's outcome, each node's state, attempts, time and cache
    reuse, and the metrics.json each node wrote to its artifact dir (as the design's run report asks)."""
    import json

    from pyarrow import fs as pafs

    status = json.loads(status_json)
    fs, base = _fs(f"{root.rstrip('/')}/{submission_id}")
    nodes: dict[str, Any] = {}
    for node in status["nodes"]:
        entry = {"kind": node["kind"], "state": node["state"], "attempts": node["attempts"],
                 "seconds": round(node["ended_at"] - node["started_at"], 3)
                 if node.get("ended_at") and node.get("started_at") else None}
        if node["state"] == "CACHED":
            entry["reused"] = node.get("reason", "")
        path = f"{base}/{node['node_id']}/files/metrics.json"
        if fs.get_file_info(path).type == pafs.FileType.File:
            with fs.open_input_stream(path) as source:
                try:
                    entry["metrics"] = json.loads(source.read())
                except ValueError:
                    entry["metrics"] = None
        nodes[node["node_id"]] = entry
    report = {"submission_id": submission_id, "pipeline_id": status["pipeline_id"], "state": status["state"],
              "created_at": status["created_at"], "ended_at": status["ended_at"],
              "wall_s": round(status["ended_at"] - status["created_at"], 3) if status["ended_at"] else None,
              "counts": status["counts"], "params": status.get("params", {}), "nodes": nodes}
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/metrics.json") as out:
        out.write((json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    return report
