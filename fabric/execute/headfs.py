"""A pyarrow filesystem onto a node's checkpoint space on the head's disk, through the head's sink actor: what
Ray Train and Tune get as `storage_filesystem` on a worker that shares no disk with the head, so that the
checkpoints of every attempt are on the head (a retry, a resume on a new cluster, or a training worker on
another node finds them), never on a worker's own disk. Paths under `root` map onto the space; others fail.

Pickled with Ray Train's storage context to its controller and workers: it holds the sink's handle and the
attempt's grant, which the node's own task holds anyway.
"""

from __future__ import annotations

import io
import posixpath
import secrets
from typing import Any

import pyarrow as pa
from pyarrow import fs as pafs

from fabric.execute.headfiles import DIRECTORY, NOT_FOUND, Info
from fabric.execute.headsink import MAX_CHUNK_BYTES

WAIT_S = 120.0


class HeadFiles(pafs.FileSystemHandler):
    """The handler of `head_filesystem`: each operation is one call of the sink's `checkpoint_op`."""

    def __init__(self, sink: Any, submission_id: str, node_id: str, attempt: int, grant: str, root: str) -> None:
        self.sink, self.submission_id, self.node_id, self.attempt, self.grant = (
            sink, submission_id, node_id, attempt, grant)
        self.root = posixpath.normpath(root)

    def _call(self, op: str, *args: Any) -> Any:
        import ray

        ref = self.sink.checkpoint_op.remote(self.submission_id, self.node_id, self.attempt, self.grant, op, args)
        try:
            return ray.get(ref, timeout=WAIT_S)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, FileNotFoundError):
                raise FileNotFoundError(str(exc.cause)) from None
            raise OSError(f"the head refused {op} on the checkpoint space: {exc.cause}") from None

    def _name(self, path: str) -> str:
        path = posixpath.normpath(path) if path else path
        if path == self.root:
            return ""
        if not path.startswith(self.root + "/"):
            raise PermissionError(f"{path!r} is outside this node's checkpoint space {self.root!r}")
        return path[len(self.root) + 1:]

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def _file_info(self, info: Info) -> pafs.FileInfo:
        name, kind, size, mtime_ns = info
        return pafs.FileInfo(self._path(name), type=pafs.FileType(kind),
                             size=size if kind != DIRECTORY and kind != NOT_FOUND else None,
                             mtime_ns=mtime_ns if kind != NOT_FOUND else None)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeadFiles) and (other.submission_id, other.node_id, other.root) == (
            self.submission_id, self.node_id, self.root)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self.submission_id, self.node_id, self.root))

    def get_type_name(self) -> str:
        return "fabric-head"

    def normalize_path(self, path: str) -> str:
        return posixpath.normpath(path) if path else path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        infos = self._call("info", [self._name(path) for path in paths])
        return [self._file_info(info) for info in infos]

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        found = self._call("listing", self._name(selector.base_dir), bool(selector.recursive))
        if found is None:
            if selector.allow_not_found:
                return []
            raise FileNotFoundError(selector.base_dir)
        return [self._file_info(info) for info in found]

    def create_dir(self, path: str, recursive: bool = True) -> None:
        self._call("mkdir", self._name(path))

    def delete_dir(self, path: str) -> None:
        self._call("delete", self._name(path), "dir")

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._call("delete", self._name(path), "contents", missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("the checkpoint space's filesystem has no root to empty")

    def delete_file(self, path: str) -> None:
        self._call("delete", self._name(path), "file")

    def move(self, src: str, dest: str) -> None:
        self._call("move", self._name(src), self._name(dest))

    def copy_file(self, src: str, dest: str) -> None:
        self._write(self._name(dest), self._read(self._name(src)))

    def _read(self, name: str) -> bytes:
        pieces: list[bytes] = []
        offset = 0
        while True:
            piece = self._call("read", name, offset, MAX_CHUNK_BYTES)
            if piece is None:
                raise FileNotFoundError(self._path(name))
            pieces.append(piece)
            offset += len(piece)
            if len(piece) < MAX_CHUNK_BYTES:
                return b"".join(pieces)

    def _write(self, name: str, data: bytes) -> None:
        writer = _Writer(self, name)
        writer.write(data)
        writer.close()

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self._read(self._name(path)))

    def open_input_file(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self._read(self._name(path)))

    def open_output_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        return pa.PythonFile(_Writer(self, self._name(path)), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        raise NotImplementedError("the checkpoint space's files are written whole")


class _Writer(io.RawIOBase):
    """A file being written: pieces go to the head as they fill, the file appears whole when it is closed."""

    def __init__(self, files: HeadFiles, name: str) -> None:
        super().__init__()
        self.files, self.name, self.token = files, name, secrets.token_hex(16)
        self.buffer, self.sent = bytearray(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.buffer += view
        while len(self.buffer) >= MAX_CHUNK_BYTES:
            self._send(bytes(self.buffer[:MAX_CHUNK_BYTES]))
            del self.buffer[:MAX_CHUNK_BYTES]
        return len(view)

    def _send(self, piece: bytes) -> None:
        self.files._call("write", self.name, self.token, self.sent, piece)
        self.sent += len(piece)

    def close(self) -> None:
        if self.closed:
            return
        if self.buffer:
            self._send(bytes(self.buffer))
            self.buffer.clear()
        self.files._call("commit", self.name, self.token, self.sent)
        super().close()


def head_filesystem(sink: Any, submission_id: str, node_id: str, attempt: int, grant: str, root: str
                    ) -> pafs.FileSystem:
    """A pyarrow filesystem whose paths under `root` are the node's checkpoint space on the head."""
    return pafs.PyFileSystem(HeadFiles(sink, submission_id, node_id, attempt, grant, root))


__all__ = ["HeadFiles", "head_filesystem"]
