"""Node functions for the reliability tests: each execution leaves a side-effect marker file.

A marker is named `<submission>~<node>~<attempt>~<pid>`, so the invariant checker can count
executions per node independently of what the store says happened.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from fabric.context import context


def mark(marker_dir: str, seconds: float = 0.0, pid_file: str = "", **_: object) -> str:
    """Records this execution; optionally writes its pid (for a test to kill) and sleeps."""
    ctx = context()
    path = Path(marker_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{ctx.submission_id}~{ctx.node_id}~{ctx.attempt}~{os.getpid()}").write_text(str(time.time()))
    if pid_file:
        Path(pid_file).write_text(f"{os.getpid()} {ctx.attempt}")
    if seconds:
        time.sleep(seconds)
    return ctx.node_id


def fail_always(marker_dir: str, **_: object) -> None:
    mark(marker_dir)
    raise RuntimeError("planned failure: every attempt fails")


def use_secret(marker_dir: str, scope: str, key: str) -> str:
    """Reads a secret by reference and proves it did by writing its digest (never the value) to a marker."""
    value = context().secret(key, scope=scope)
    mark(marker_dir)
    (Path(marker_dir) / "secret.sha256").write_text(hashlib.sha256(value.encode()).hexdigest())
    return "used"


def read_unscoped_secret(scope: str, key: str) -> str:
    return context().secret(key, scope=scope)
