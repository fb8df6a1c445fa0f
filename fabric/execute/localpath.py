"""Spotting a node output that is a path to a file on the worker's own disk, which no other node can read."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

from fabric.errors import ErrorCode


def local_file_outputs(slots: Sequence[str], values: Sequence[Any]) -> list[tuple[str, str]]:
    """(out, path) for each output that is a str or Path naming an existing local file or directory.

    A URI (s3://, gs://, ...) is shared storage, so it is fine; a string that is not an existing path
    (most strings are plain text) is fine too. Only what exists here, on this worker, is reported."""
    found = []
    for slot, value in zip(slots, values, strict=True):
        if isinstance(value, PurePath):
            text = str(value)
        elif isinstance(value, str) and 0 < len(value) < 4096 and "\n" not in value and "://" not in value:
            text = value
        else:
            continue
        try:
            if os.path.exists(text) and (os.path.isabs(text) or os.sep in text or isinstance(value, PurePath)):
                found.append((slot, text))
        except (OSError, ValueError):  # an embedded NUL, a name too long: not a path
            continue
    return found


def local_path_warning(node_id: str, slot: str, path: str) -> str:
    """The line written into the node's log for one such output."""
    return (f"[{ErrorCode.LOCAL_PATH_OUTPUT}] node {node_id!r} returned output {slot!r} as the local path "
            f"{path!r}: it exists only on this worker's disk, so a downstream node on another machine cannot "
            "read it. Return the table itself (pyarrow/Polars: it travels through Ray's object store), or "
            "write the file to fabric.context().artifact_dir and let fabric move it to the artifact store.")


__all__ = ["local_file_outputs", "local_path_warning"]
