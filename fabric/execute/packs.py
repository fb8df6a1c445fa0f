"""One outputs file for many map children: what a pack of children (one Ray task) persists, and finding a child's
outputs in it again.

A pack writes `<root>/<submission>/<first child>/outputs/pack-<id>.pack` each time it reports successes: a file
per report instead of a directory and a file per child (their cost was a tenth of a no-op map's time). Layout:

    b"fabric-pack 1 <header length>\\n"  then the header, JSON {child id: [offset, length]}, then the blobs

Each blob is a child's outputs manifest (fabric/execute/outputs.py), the same bytes a child alone writes to its
own `outputs.pkl`. The header is plain JSON, so the head finds and cuts a child's blob without unpickling it.
A pack lists children of its own map only; any other entry is ignored when read.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from fabric.execute.storefs import filesystem
from fabric.spec.mapping import parent_of

PACK_PREFIX, PACK_SUFFIX = "pack-", ".pack"
_MAGIC = b"fabric-pack 1 "
_MAX_HEADER_BYTES = 64 << 20
RESCAN_AFTER_S = 1.0  # a child not found is looked for again on disk at most this often per map

Location = tuple[str, int, int]  # the pack's path, the blob's offset and length

_found: dict[tuple[str, str, str], tuple[float, dict[str, Location]]] = {}  # (root, sub, map) -> scanned at, index


def pack_name() -> str:
    return f"{PACK_PREFIX}{uuid.uuid4().hex}{PACK_SUFFIX}"


def pack_bytes(blobs: Sequence[tuple[str, bytes]]) -> bytes:
    """One pack of (child id, manifest blob)."""
    header: dict[str, list[int]] = {}
    offset = 0
    for child, blob in blobs:
        header[child] = [offset, len(blob)]
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_MAGIC, str(len(head)).encode(), b"\n", head, *(blob for _, blob in blobs)])


def read_header(source: Any, map_id: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """(where the blobs start, child -> (offset, length)) of an open pack; children of `map_id` only. ValueError if
    it is not a pack."""
    first = source.read(len(_MAGIC) + 12)
    if not first.startswith(_MAGIC) or b"\n" not in first:
        raise ValueError("not a fabric pack")
    size_text, rest = first[len(_MAGIC):].split(b"\n", 1)
    size = int(size_text)
    if not 0 < size <= _MAX_HEADER_BYTES:
        raise ValueError("a pack header of a size out of bounds")
    head = rest + source.read(size - len(rest))
    entries = json.loads(head[:size])
    base = len(_MAGIC) + len(size_text) + 1 + size
    index: dict[str, tuple[int, int]] = {}
    for child, place in entries.items() if isinstance(entries, dict) else ():
        found = parent_of(child) if isinstance(child, str) else None
        if (found is not None and found[0] == map_id and isinstance(place, list) and len(place) == 2
                and all(isinstance(v, int) and v >= 0 for v in place)):
            index[child] = (place[0], place[1])
    return base, index


def _scan(root: str, submission_id: str, map_id: str) -> dict[str, Location]:
    """Every pack of `map_id`'s children in the submission, read from the store (the packs' headers only)."""
    from pyarrow import fs as pafs

    fs, base = filesystem(f"{root.rstrip('/')}/{submission_id}")
    try:
        nodes = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except (OSError, ValueError):
        return {}
    index: dict[str, Location] = {}
    for node in nodes:
        found = parent_of(node.base_name)
        if node.type != pafs.FileType.Directory or found is None or found[0] != map_id:
            continue
        for info in fs.get_file_info(pafs.FileSelector(f"{node.path}/outputs", allow_not_found=True)):
            if not (info.base_name.startswith(PACK_PREFIX) and info.base_name.endswith(PACK_SUFFIX)):
                continue
            try:
                with fs.open_input_file(info.path) as source:
                    start, entries = read_header(source, map_id)
            except (OSError, ValueError):
                continue  # a pack being moved into place, or not fabric's: its children are not on record
            index.update({child: (info.path, start + off, length) for child, (off, length) in entries.items()})
    return index


def packed(root: str, submission_id: str, child: str, *, fresh: bool = False) -> Location | None:
    """Where a map child's outputs are in a pack, or None. Packs only ever appear, so a child found once stays
    found; one not found sends the map's packs to be read again, at most once per RESCAN_AFTER_S (a run's
    resume asks for each of its 10,000 children), or at once when `fresh` (the child is known to have
    succeeded, so a miss would be taken for outputs swept away)."""
    found = parent_of(child)
    if found is None:
        return None
    key = (root, submission_id, found[0])
    scanned_at, index = _found.get(key, (-RESCAN_AFTER_S, {}))
    if child not in index and (fresh or time.monotonic() - scanned_at >= RESCAN_AFTER_S):
        scanned_at, index = time.monotonic(), _scan(root, submission_id, found[0])
        if len(_found) > 256:
            _found.clear()
        _found[key] = (scanned_at, index)
    return index.get(child)


def read_packed(root: str, location: Location) -> bytes:
    """A child's manifest blob, cut from its pack (read, never unpickled: this may run on the head)."""
    path, offset, length = location
    fs, _ = filesystem(root)
    with fs.open_input_file(path) as source:
        return source.read_at(length, offset)


def forget(root: str, submission_id: str) -> None:
    """The submission's tree went (fabric/execute/outputs.py remove_tree): its packs are not on record any more."""
    for key in [k for k in _found if k[:2] == (root, submission_id)]:
        del _found[key]


__all__ = ["PACK_PREFIX", "pack_bytes", "pack_name", "packed", "read_header", "read_packed"]
