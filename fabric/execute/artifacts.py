"""Reading a submission's artifacts back from the artifact store, by names that cannot leave its root.

`<root>/<submission>/metrics.json` is the run's report; `<root>/<submission>/<node>/files/<name>` is what
a node wrote to its artifact dir. Every path segment is checked against a strict pattern before any
filesystem call, so `..`, absolute paths, NUL bytes and encoded tricks are rejected, never resolved.
"""

from __future__ import annotations

import re
from typing import Any

from fabric.errors import ErrorCode, FabricError, NotFoundError
from fabric.execute.outputs import _fs, files_dir, report_written
from fabric.spec.mapping import CHILD_ID_RE  # a map's child `node[i]`
from fabric.spec.names import NODE_ID_PATTERN, SUBMISSION_ID_PATTERN

SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
MAX_ARTIFACT_BYTES = 64 << 20
RUN_REPORT = "metrics.json"


def _bad(where: str, value: str, rule: str) -> FabricError:
    return FabricError(f"{where} {value[:200]!r} is not allowed: {rule}", code=ErrorCode.SPEC_FIELD, where=where,
                       fix="use the names `GET /api/orch/artifacts/{submission_id}` lists")


def check_names(submission_id: str, node_id: str | None, name: str | None) -> list[str]:
    """The path segments of an artifact name, or a SPEC_FIELD error (a 422) naming what is wrong."""
    if not re.match(SUBMISSION_ID_PATTERN, submission_id):
        raise _bad("submission_id", submission_id, "not a submission id")
    if node_id is not None and not re.match(NODE_ID_PATTERN, node_id) and not CHILD_ID_RE.match(node_id):
        raise _bad("node", node_id, "not a node id")
    if name is None:
        return []
    parts = name.split("/")
    if len(name) > 1024 or not all(SEGMENT.match(part) and ".." not in part for part in parts):
        raise _bad("name", name, "each segment of a name is letters, digits, '_', '.', '-' and never '..'")
    return parts


def read_artifact(root: str, submission_id: str, node_id: str | None, name: str) -> bytes:
    """The bytes of one artifact (node None: the submission's own files, i.e. its metrics.json)."""
    from pyarrow import fs as pafs

    parts = check_names(submission_id, node_id, name)
    report_written(root, submission_id)
    if node_id is None and parts != [RUN_REPORT]:
        raise NotFoundError(f"a submission has only {RUN_REPORT} of its own", code=ErrorCode.NOT_FOUND, where="name",
                            fix="ask for a node's files under /api/orch/artifacts/{id}/{node}/{name}")
    base = f"{root.rstrip('/')}/{submission_id}" if node_id is None else files_dir(root, submission_id, node_id)
    fs, path = _fs(f"{base}/{'/'.join(parts)}")
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise NotFoundError(f"no artifact {name!r} for {submission_id}" + (f"/{node_id}" if node_id else ""),
                            code=ErrorCode.NOT_FOUND, where="name",
                            fix=f"list them with GET /api/orch/artifacts/{submission_id}")
    if info.size > MAX_ARTIFACT_BYTES:
        raise FabricError(f"artifact {name!r} is {info.size} bytes, over {MAX_ARTIFACT_BYTES}",
                          code=ErrorCode.TOO_LARGE, where="name", fix="read it from the artifact store directly")
    with fs.open_input_stream(path) as source:
        return source.read()


def list_artifacts(root: str, submission_id: str) -> dict[str, Any]:
    """{report: bool, nodes: {node: [name, ...]}} for one submission."""
    from pyarrow import fs as pafs

    check_names(submission_id, None, None)
    report_written(root, submission_id)
    fs, base = _fs(f"{root.rstrip('/')}/{submission_id}")
    nodes: dict[str, list[str]] = {}
    if fs.get_file_info(base).type == pafs.FileType.Directory:
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=False)):
            files = f"{info.path}/files"
            if info.type != pafs.FileType.Directory or fs.get_file_info(files).type != pafs.FileType.Directory:
                continue
            nodes[info.base_name] = sorted(i.path[len(files) + 1:] for i in fs.get_file_info(
                pafs.FileSelector(files, recursive=True)) if i.type == pafs.FileType.File)
    report = fs.get_file_info(f"{base}/{RUN_REPORT}").type == pafs.FileType.File
    return {"submission_id": submission_id, "report": report, "nodes": nodes}
