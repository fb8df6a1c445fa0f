"""A node's checkpoint space on the head's disk, `<artifact root>/checkpoints/<submission>/<node>/`: the file
operations a filesystem needs (info, list, read, chunked write and commit, make, delete, move), confined to
that space. Pure file work: the head sink (fabric/execute/headsink.py) runs it for Ray Train workers on nodes
that share no disk with the head, through the filesystem of fabric/execute/headfs.py.

Names are relative to the space ("" is the space itself) and checked segment by segment before any filesystem
call: no absolute path, no `.` or `..`, no odd characters, so a caller cannot leave the space.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from fabric.errors import ErrorCode, FabricError
from fabric.execute.artifacts import check_names

CHECKPOINTS = "checkpoints"
MAX_NAME_CHARS = 1024
_SEGMENT = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.=-]{0,254}$")
_TOKEN = re.compile(r"^[0-9a-f]{16,64}$")
_PART = re.compile(r"^\..+\.w[0-9a-f]{16,64}\.part$")  # a write in progress: not shown until committed
# pyarrow.fs.FileType's values, so that the filesystem side maps them without a table.
NOT_FOUND, FILE, DIRECTORY = 0, 2, 3
Info = tuple[str, int, int, int]  # (relative name, type, size, mtime in ns)
OPS = frozenset({"info", "listing", "read", "mkdir", "delete", "move", "write", "commit"})


def _bad(name: object, rule: str) -> FabricError:
    return FabricError(f"checkpoint name {str(name)[:200]!r} is not allowed: {rule}", code=ErrorCode.SPEC_FIELD,
                       where="name", fix="a node reads and writes only under its own checkpoint space")


def checkpoint_space(artifacts: str, submission_id: str, node_id: str) -> Path:
    """`<artifacts>/checkpoints/<submission>/<node>` (a local artifact root)."""
    check_names(submission_id, node_id, None)
    return Path(artifacts, CHECKPOINTS, submission_id, node_id)


class NodeFiles:
    """The file operations on one node's checkpoint space."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: object) -> Path:
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
            raise _bad(name, f"a name is a string of at most {MAX_NAME_CHARS} characters")
        if name == "":
            return self.root
        parts = name.split("/")
        if not all(_SEGMENT.match(part) and part not in (".", "..") for part in parts):
            raise _bad(name, "each segment is letters, digits, '_', '.', '=', '-', never '.' or '..'")
        return self.root.joinpath(*parts)

    def _info(self, name: str, path: Path) -> Info:
        try:
            stat = path.lstat()
        except FileNotFoundError:
            return name, NOT_FOUND, 0, 0
        kind = DIRECTORY if path.is_dir() and not path.is_symlink() else FILE
        return name, kind, stat.st_size if kind == FILE else 0, stat.st_mtime_ns

    def info(self, names: list[str]) -> list[Info]:
        return [self._info(name, self.path(name)) for name in names]

    def listing(self, base: str, recursive: bool) -> list[Info] | None:
        """What is under `base` (None: it is not a directory)."""
        top = self.path(base)
        if not top.is_dir() or top.is_symlink():
            return None
        found: list[Info] = []
        for entry in sorted(top.rglob("*") if recursive else top.iterdir()):
            if _PART.match(entry.name):
                continue
            found.append(self._info(entry.relative_to(self.root).as_posix(), entry))
        return found

    def read(self, name: str, offset: int, size: int) -> bytes | None:
        path = self.path(name)
        if not path.is_file() or path.is_symlink():
            return None
        with path.open("rb") as source:
            source.seek(max(0, int(offset)))
            return source.read(max(0, int(size)))

    def mkdir(self, name: str) -> None:
        self.path(name).mkdir(parents=True, exist_ok=True)

    def delete(self, name: str, what: str, missing_ok: bool = False) -> bool:
        """`what` is file, dir or contents; False when there was nothing to delete."""
        path = self.path(name)
        if not path.exists():
            if missing_ok:
                return False
            raise FileNotFoundError(name)
        if what == "file":
            path.unlink()
        elif what == "dir":
            if path == self.root:
                raise _bad(name, "the space itself is not deleted")
            shutil.rmtree(path)
        elif what == "contents":
            for entry in path.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        else:
            raise _bad(what, "delete takes file, dir or contents")
        return True

    def move(self, source: str, destination: str) -> None:
        target = self.path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(source), target)

    def _part(self, name: str, token: str) -> tuple[Path, Path]:
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise _bad(token, "a write token is 16 to 64 hex digits")
        final = self.path(name)
        if final == self.root:
            raise _bad(name, "the space itself is a directory")
        return final, final.with_name(f".{final.name}.w{token}.part")

    def write(self, name: str, token: str, offset: int, data: bytes) -> None:
        """A piece of a file, at its offset, into the write's own temporary file."""
        if not isinstance(offset, int) or offset < 0:
            raise _bad(offset, "an offset is an integer >= 0")
        part = self._part(name, token)[1]
        part.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def commit(self, name: str, token: str, size: int) -> None:
        """The whole file into place, atomically, once its `size` bytes are there."""
        final, part = self._part(name, token)
        if not part.exists():
            if final.is_file() and final.stat().st_size == size:
                return  # a retried commit
            if size != 0:
                raise _bad(name, "nothing was written for this write token")
            part.parent.mkdir(parents=True, exist_ok=True)
            part.touch()
        if part.stat().st_size != size:
            raise FabricError(f"{name}: {part.stat().st_size} bytes arrived, {size} were sent",
                              code=ErrorCode.SPEC_FIELD, where="name")
        os.replace(part, final)


__all__ = ["CHECKPOINTS", "DIRECTORY", "FILE", "NOT_FOUND", "OPS", "Info", "NodeFiles", "checkpoint_space"]
