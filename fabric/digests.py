"""Digests of values, files and modules for cache keys: what a value *is*, not what it is called.

A table is digested by its Arrow IPC bytes, an array by dtype, shape and bytes, a string naming a local
file or directory by the files' contents (a node that returns a path hands over the data behind it), and
anything else by its pickle. Code is versioned by the source of the module that holds it. A leaf: it imports
nothing of fabric, so the worker, the cache and MLflow tracking share it without an import cycle.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
from collections.abc import Sequence
from typing import Any

CHUNK = 1 << 20
MAX_PATH_CHARS = 4096


def _new() -> Any:
    return hashlib.blake2b(digest_size=20)


def file_digest(path: str, h: Any | None = None) -> str:
    h = h or _new()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _path_digest(path: str) -> str:
    h = _new()
    if os.path.isfile(path):
        h.update(b"file\0")
        return file_digest(path, h)
    h.update(b"dir\0")
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode() + b"\0")
            h.update(file_digest(full).encode())
    return h.hexdigest()


def value_digest(value: Any) -> str:
    """A digest of what `value` holds (see the module docstring)."""
    import pyarrow as pa

    h = _new()
    if type(value).__module__.startswith("polars"):
        value = value.to_arrow() if hasattr(value, "to_arrow") else value
    if isinstance(value, pa.RecordBatch):
        value = pa.Table.from_batches([value])
    if isinstance(value, pa.Table):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write_table(value)
        h.update(b"arrow\0")
        h.update(sink.getvalue())
        return h.hexdigest()
    if type(value).__name__ == "ndarray" and hasattr(value, "tobytes"):
        h.update(f"ndarray\0{value.dtype.str}\0{value.shape}\0".encode())
        h.update(value.tobytes())
        return h.hexdigest()
    if isinstance(value, str) and 0 < len(value) < MAX_PATH_CHARS and "\0" not in value and os.path.exists(value):
        return "path:" + _path_digest(value)
    try:
        blob = pickle.dumps(value, protocol=5)
    except Exception:  # noqa: BLE001 - lambdas and closures: Ray's own fallback
        from ray import cloudpickle

        blob = cloudpickle.dumps(value)
    h.update(b"pickle\0")
    h.update(blob)
    return h.hexdigest()


def output_digests(slots: Sequence[str], values: Sequence[Any]) -> dict[str, str]:
    return {slot: value_digest(value) for slot, value in zip(slots, values, strict=True)}


def module_digest(module: str) -> str:
    """The digest of a module's source file ('?' when it cannot be found: such a node never hits the cache)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return "?"
    origin = spec.origin if spec else None
    return file_digest(origin) if origin and os.path.isfile(origin) else "?"

