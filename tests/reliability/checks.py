"""One call at the end of a fault or load test: wait for what was acknowledged, check every invariant, record."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.reliability.invariants import check_audit_replays, check_no_duplicates, check_nothing_lost
from tests.reliability.results import record


def wait_all(client: Any, submission_ids: Iterable[str], timeout: float = 120) -> dict[str, Any]:
    """Every submission's final status (by the client that submitted them: SDK or HTTP)."""
    deadline = time.monotonic() + timeout
    finals = {}
    for sid in submission_ids:
        finals[sid] = client.get(sid, check=False).wait(max(deadline - time.monotonic(), 1.0))
    return finals


def check_all(name: str, db: Path, acknowledged: Iterable[str], marker_dir: Path | None, max_attempts: int,
              *, restarts: int = 0, label: tuple[str, str] | None = None) -> dict[str, Any]:
    """Invariants 1, 2 and 4 over the real store. An attempt that a control-plane restart interrupted is
    not charged to the node's budget (the registry resumes it), so each such restart allows one more
    execution: `restarts`."""
    acked = list(acknowledged)
    figures: dict[str, Any] = {}
    figures.update(check_nothing_lost(db, acked))
    figures.update(check_no_duplicates(db, acked, marker_dir, max_attempts + restarts, label))
    figures.update(check_audit_replays(db, acked))
    record("invariants", name, **figures)
    return figures
