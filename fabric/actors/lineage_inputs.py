"""What lineage is built from: a record's plan (compiled once per spec and parameters) and where its nodes'
persisted outs and artifact files are, with their SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from stat import S_ISREG
from typing import Any

from fabric.execute.outputs import MANIFEST, files_dir, outputs_dir
from fabric.kinds import kind_checks
from fabric.plan import ExecutionPlan, compile_plan
from fabric.record import SubmissionRecord
from fabric.record.lineage import NodeIO, StoredFile
from fabric.spec import load_spec, parse_runtime_params

HASH_LIMIT_BYTES = 1 << 30  # files larger than this are listed without a SHA-256: hashing them costs too much
PLANS_KEPT = 32  # compiled plans kept, the most recently asked for
_PLANS: OrderedDict[bytes, ExecutionPlan] = OrderedDict()
_PLANS_LOCK = threading.Lock()


def plan_of(record: SubmissionRecord) -> ExecutionPlan:
    """The record's plan, compiled once per distinct spec and parameters: a pipeline that runs every few minutes,
    or the UI and lineage asking about one run, pay its validation and compilation (100 ms for 1,000 nodes) once."""
    key = hashlib.sha256(_canonical([record.spec, record.runtime_params])).digest()
    with _PLANS_LOCK:
        plan = _PLANS.get(key)
        if plan is not None:
            _PLANS.move_to_end(key)
            return plan
    plan = compile_plan(load_spec(record.spec), parse_runtime_params(record.runtime_params), kind_checks())
    with _PLANS_LOCK:
        _PLANS[key] = plan
        while len(_PLANS) > PLANS_KEPT:
            _PLANS.popitem(last=False)
    return plan


def _canonical(value: Any) -> bytes:
    try:
        import orjson

        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (ImportError, TypeError):  # no orjson, or a value it does not take: plain json says the same
        return json.dumps(value, sort_keys=True, default=repr).encode()


def node_io(plan: ExecutionPlan) -> dict[str, NodeIO]:
    consumed = plan.consumed_outs()
    return {n: NodeIO(n, node.kind, tuple((w.name, w.producer, w.out) for w in node.inputs), node.result_slots,
                      node.content_hash, node.pool, consumed[n]) for n, node in plan.nodes.items()}


def _sha256(path: str, stat: os.stat_result) -> str | None:
    if stat.st_size > HASH_LIMIT_BYTES:
        return None
    return _sha256_of(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4096)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """Cached by (path, size, mtime): an out read by ten nodes is hashed once, not on every event."""
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Files:
    """Where a node's persisted outs and artifact files are, with their SHA-256 (local paths only)."""

    def __init__(self, home: str, artifacts: str) -> None:
        self._home, self._artifacts = home, artifacts
        # Persisted outputs never change once written (the manifest goes last): found once, known for good.
        self._found: OrderedDict[tuple[str, str, str], StoredFile] = OrderedDict()

    def output(self, submission_id: str, node_id: str, out: str) -> StoredFile | None:
        key = (submission_id, node_id, out)
        if key in self._found:
            return self._found[key]
        base = outputs_dir(self._artifacts, submission_id, node_id)
        if "://" in base:
            return None
        # Plain strings and os.stat, not pathlib: this runs for every node's end (pathlib was most of its cost).
        for path, uri in ((f"{base}/{out}.arrow", None), (f"{base}/{MANIFEST}", f"{base}/{MANIFEST}#{out}")):
            try:
                stat = os.stat(path)  # one stat for "is it there", its hash's cache key and its size
            except OSError:
                continue
            if S_ISREG(stat.st_mode):
                self._found[key] = StoredFile(uri or path, _sha256(path, stat), stat.st_size)
                if len(self._found) > 100_000:
                    self._found.popitem(last=False)
                return self._found[key]
        return None

    def artifacts(self, submission_id: str, node_id: str) -> list[StoredFile]:
        """The node's files as the artifact root keeps them (`<root>/<sub>/<node>/files/`): its scratch dir
        (`runs/`) is on the disk of whichever node ran it, and gone once the files are sent from off the head."""
        base = files_dir(self._artifacts, submission_id, node_id)
        if "://" in base or not os.path.isdir(base):
            return []
        found = []
        for path in sorted(Path(base).rglob("*")):
            stat = path.stat()
            if S_ISREG(stat.st_mode):
                found.append(StoredFile(str(path), _sha256(str(path), stat), stat.st_size))
        return found
