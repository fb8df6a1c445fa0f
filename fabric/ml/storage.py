"""Checkpoint storage as the training loops see it: a local path, a pyarrow.fs URI, or a filesystem handed in
(the head's, for a node that shares no disk with it)."""

from __future__ import annotations

from typing import Any


def open_storage(where: str, filesystem: Any = None) -> tuple[Any, str]:
    """(filesystem, path in it) for `where`; `filesystem` when one is given."""
    import pyarrow.fs as pafs

    if filesystem is not None:
        return filesystem, where
    return pafs.FileSystem.from_uri(where) if "://" in where else (pafs.LocalFileSystem(), where)


def list_storage(storage: str, filesystem: Any = None) -> tuple[Any, list[Any]] | None:
    """(filesystem, every entry below `storage`), or None when nothing is there or it cannot be read."""
    import pyarrow.fs as pafs

    fs, base = open_storage(storage, filesystem)
    try:
        return fs, fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except (FileNotFoundError, OSError):
        return None


def found_at(storage: str, directory: str, filesystem: Any = None) -> str:
    """A directory found under `storage`, addressed as `storage` is: a URI keeps its scheme and its query (so it
    is read through the same endpoint); a path, or a path in a given filesystem, stays a path."""
    if "://" not in storage or filesystem is not None:
        return directory
    query = storage.partition("?")[2]
    return storage.split("://", 1)[0] + "://" + directory + (f"?{query}" if query else "")


__all__ = ["found_at", "list_storage", "open_storage"]
