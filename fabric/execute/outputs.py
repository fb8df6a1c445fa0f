"""Node outputs persisted to the artifact store, so that a resumed run does not recompute them.

Layout under the artifact root (a local dir or any pyarrow.fs URI: s3://, gs://, ...):
    <root>/<submission>/<node>/outputs/<out>.arrow   one Arrow IPC file per table output
    <root>/<submission>/<node>/outputs/outputs.pkl   every other value, written last: its presence
                                                      means the node's outputs are complete
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

MANIFEST = "outputs.pkl"


def _fs(root: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), root


def outputs_dir(root: str, submission_id: str, node_id: str) -> str:
    return f"{root.rstrip('/')}/{submission_id}/{node_id}/outputs"


def persist_outputs(root: str, submission_id: str, node_id: str, values: Mapping[str, Any]) -> None:
    """Write `values`; the manifest goes last (atomically where the filesystem can rename)."""
    import pyarrow as pa

    fs, base = _fs(outputs_dir(root, submission_id, node_id))
    fs.create_dir(base, recursive=True)
    manifest: dict[str, tuple[str, Any]] = {}
    for name, value in values.items():
        if isinstance(value, pa.Table):
            with fs.open_output_stream(f"{base}/{name}.arrow") as sink, pa.ipc.new_file(sink, value.schema) as w:
                w.write_table(value)
            manifest[name] = ("arrow", f"{name}.arrow")
        else:
            manifest[name] = ("value", value)
    try:
        blob = pickle.dumps(manifest, protocol=5)
    except Exception:  # noqa: BLE001 - lambdas, closures: the same fallback Ray itself uses
        from ray import cloudpickle

        blob = cloudpickle.dumps(manifest)
    temp = f"{base}/.{MANIFEST}.{uuid.uuid4().hex}"
    with fs.open_output_stream(temp) as out:
        out.write(blob)
    fs.move(temp, f"{base}/{MANIFEST}")


def has_outputs(root: str, submission_id: str, node_id: str) -> bool:
    from pyarrow import fs as pafs

    fs, base = _fs(outputs_dir(root, submission_id, node_id))
    return fs.get_file_info(f"{base}/{MANIFEST}").type == pafs.FileType.File


def load_outputs(root: str, submission_id: str, node_id: str, names: Sequence[str]) -> tuple[Any, ...] | Any:
    """The persisted values of `names`, in order (a single value when one name is asked for)."""
    import pyarrow as pa

    fs, base = _fs(outputs_dir(root, submission_id, node_id))
    with fs.open_input_stream(f"{base}/{MANIFEST}") as source:
        manifest = pickle.loads(source.read())
    values = []
    for name in names:
        how, payload = manifest[name]
        if how == "arrow":
            with fs.open_input_file(f"{base}/{payload}") as source:
                values.append(pa.ipc.open_file(source).read_all())
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
        return pickle.loads(source.read())


def remove_tree(root: str, submission_id: str) -> int:
    """Delete `<root>/<submission_id>` and everything under it; returns how many files went."""
    from pyarrow import fs as pafs

    fs, base = _fs(f"{root.rstrip('/')}/{submission_id}")
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return 0
    files = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if i.type == pafs.FileType.File]
    fs.delete_dir(base)
    return len(files)
