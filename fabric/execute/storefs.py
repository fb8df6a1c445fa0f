"""The filesystem behind an artifact root: a local directory, or any pyarrow.fs URI (s3://, gs://, file://)."""

from __future__ import annotations

from typing import Any


def filesystem(root: str) -> tuple[Any, str]:
    """(a pyarrow filesystem, the path of `root` on it)."""
    from pyarrow import fs as pafs

    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), root
