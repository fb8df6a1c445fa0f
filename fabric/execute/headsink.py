"""Writing what a node sends from its worker onto the head's disk: logs under FABRIC_HOME, files and outputs
under a local artifact root. Pure file work (the Ray actor around it is fabric/execute/sink.py).

A worker's own disk is scratch: on a real cluster it is gone, or elsewhere, when the head serves the run.
Every write names (submission, node, attempt) and a relative name, all checked here before any filesystem
call, so a caller can only write inside `<root>/<submission>/<node>/{files,outputs}/` or its own log file.
Writes carry their byte offset, so they may arrive in any order, and a retried one lands in the same place.
Every write shows the attempt's grant (fabric/capability.py): an attempt writes only its own log and files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fabric.capability import attempt_grant, attempt_proof, check, load_or_create_key
from fabric.errors import ErrorCode, FabricError
from fabric.execute.artifacts import check_names
from fabric.execute.headfiles import OPS, NodeFiles, checkpoint_space
from fabric.settings import Settings

MAX_CHUNK_BYTES = 8 << 20  # per call: a large file travels in several
READ_LOG_BYTES = 64 << 20  # what `logs` returns of one attempt at most (its end)
SPACES = ("files", "outputs")
_ATTEMPT = re.compile(r"^attempt-(\d{1,6})\.log$")


def logs_dir(home: str, submission_id: str, node_id: str) -> Path:
    return Path(home) / "logs" / submission_id / node_id


def log_file(home: str, submission_id: str, node_id: str, attempt: int) -> Path:
    return logs_dir(home, submission_id, node_id) / f"attempt-{attempt}.log"


def _attempt(attempt: int) -> int:
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 < attempt < 1_000_000:
        raise FabricError(f"attempt {attempt!r} is not an attempt number", code=ErrorCode.SPEC_FIELD, where="attempt")
    return attempt


def _data(offset: int, data: bytes) -> None:
    if not isinstance(offset, int) or offset < 0 or len(data) > MAX_CHUNK_BYTES:
        raise FabricError(f"a chunk is at most {MAX_CHUNK_BYTES} bytes at an offset >= 0",
                          code=ErrorCode.TOO_LARGE, where="chunk")


def node_file(root: str, submission_id: str, node_id: str, name: str) -> Path:
    """`<root>/<submission>/<node>/<name>`, where name is `files/...` or `outputs/...` and every segment
    passes the artifact-name rule (no `..`, no absolute path, no odd characters)."""
    parts = check_names(submission_id, node_id, name)
    if len(parts) < 2 or parts[0] not in SPACES:
        raise FabricError(f"name {name[:200]!r} is not under {' or '.join(SPACES)}/", code=ErrorCode.SPEC_FIELD,
                          where="name", fix="a node writes only its files/ and outputs/")
    return Path(root, submission_id, node_id, *parts)


def _pwrite(path: Path, offset: int, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


class HeadSink:
    """Writes for nodes running elsewhere. `home` is the head's FABRIC_HOME; `artifacts` its artifact root,
    or a URI (then only logs come here: workers write files and outputs to the store themselves)."""

    def __init__(self, home: str, artifacts: str) -> None:
        self.home, self.artifacts = home, artifacts
        self._key = load_or_create_key(Path(Settings.from_env(home=home).control_key_file))

    def prove(self, submission_id: str, node_id: str, attempt: int, nonce: str) -> str:
        """The answer to an attempt's challenge: this sink can make its grant (it is fabric's, not a squatter)."""
        return attempt_proof(attempt_grant(self._key, submission_id, node_id, attempt), nonce)

    def _granted(self, submission_id: str, node_id: str, attempt: int, grant: str) -> None:
        check(attempt_grant(self._key, submission_id, node_id, attempt), grant, "the head sink")

    def append_log(self, submission_id: str, node_id: str, attempt: int, grant: str, offset: int,
                   data: bytes) -> int:
        self._granted(submission_id, node_id, attempt, grant)
        check_names(submission_id, node_id, None)
        _data(offset, data)
        _pwrite(log_file(self.home, submission_id, node_id, _attempt(attempt)), offset, data)
        return offset + len(data)

    def checkpoint_op(self, submission_id: str, node_id: str, attempt: int, grant: str, op: str,
                      args: tuple[Any, ...]) -> Any:
        """One file operation on the node's checkpoint space (fabric/execute/headfiles.py) for its Ray Train
        workers elsewhere. Any attempt of the node reaches the whole space: a retry resumes from the last one."""
        self._granted(submission_id, node_id, attempt, grant)
        if "://" in self.artifacts:
            raise FabricError("the artifact root is a URI: checkpoint to it directly", code=ErrorCode.SPEC_FIELD,
                              where="artifacts")
        if op not in OPS or not isinstance(args, tuple):
            raise FabricError(f"no checkpoint operation {str(op)[:50]!r}", code=ErrorCode.SPEC_FIELD, where="op",
                              fix=f"one of {sorted(OPS)}")
        if op == "write":
            _data(args[2] if len(args) > 2 else -1, args[3] if len(args) > 3 else b"")
        files = NodeFiles(checkpoint_space(self.artifacts, submission_id, node_id))
        return getattr(files, op)(*args)

    def _temp(self, submission_id: str, node_id: str, attempt: int, name: str) -> tuple[Path, Path]:
        if "://" in self.artifacts:
            raise FabricError("the artifact root is a URI: write to it directly", code=ErrorCode.SPEC_FIELD,
                              where="artifacts")
        final = node_file(self.artifacts, submission_id, node_id, name)
        return final, final.with_name(f".{final.name}.a{_attempt(attempt)}.part")

    def put_chunk(self, submission_id: str, node_id: str, attempt: int, grant: str, name: str, offset: int,
                  data: bytes) -> None:
        self._granted(submission_id, node_id, attempt, grant)
        _data(offset, data)
        _pwrite(self._temp(submission_id, node_id, attempt, name)[1], offset, data)

    def commit(self, submission_id: str, node_id: str, attempt: int, grant: str, name: str, size: int) -> None:
        """Move a whole file into place (atomically), once all of its chunks are written."""
        self._granted(submission_id, node_id, attempt, grant)
        final, temp = self._temp(submission_id, node_id, attempt, name)
        if not temp.exists() and final.exists() and final.stat().st_size == size:
            return  # a retried commit
        temp.parent.mkdir(parents=True, exist_ok=True)
        if size == 0:
            temp.touch()
        if temp.stat().st_size != size:
            raise FabricError(f"{name}: {temp.stat().st_size} bytes arrived, {size} were sent",
                              code=ErrorCode.SPEC_FIELD, where="name")
        os.replace(temp, final)


def chunks(data: bytes | memoryview, size: int = MAX_CHUNK_BYTES) -> Iterable[tuple[int, bytes]]:
    """(offset, bytes) pieces of at most `size` bytes; one empty piece for empty data."""
    view = memoryview(data).cast("B")
    if not len(view):
        yield 0, b""
    for start in range(0, len(view), size):
        yield start, bytes(view[start:start + size])


def _read_end(path: Path, limit: int) -> str:
    with path.open("rb") as source:
        size = source.seek(0, os.SEEK_END)
        source.seek(max(0, size - limit))
        return source.read().decode("utf-8", "replace")


def full_logs(home: str, submission_id: str, node_id: str,
              stored: list[tuple[int, str, str | None]]) -> list[tuple[int, str, str | None]]:
    """Each attempt's whole log: the stored entries (a tail) with the text of the head's log file where there
    is one, and the attempts still running (a file, nothing stored yet). Sorted by attempt."""
    by_attempt = {attempt: (text, path) for attempt, text, path in stored}
    folder = logs_dir(home, submission_id, node_id)
    if folder.is_dir():
        for entry in folder.iterdir():
            match = _ATTEMPT.match(entry.name)
            if match and entry.is_file():
                by_attempt[int(match.group(1))] = (_read_end(entry, READ_LOG_BYTES), str(entry))
    return [(attempt, text, path) for attempt, (text, path) in sorted(by_attempt.items())]


__all__ = ["HeadSink", "MAX_CHUNK_BYTES", "chunks", "full_logs", "log_file", "logs_dir", "node_file"]
