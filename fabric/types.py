"""Small frozen value types shared by the layers: error details and what a worker reports."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any


def new_submission_id(now: float | None = None) -> str:
    """`sub-YYYYMMDD-HHMMSS-xxxxxx` (UTC): sortable by time, unique by its random tail."""
    return time.strftime("sub-%Y%m%d-%H%M%S-", time.gmtime(time.time() if now is None else now)) + secrets.token_hex(3)


@dataclass(frozen=True)
class ErrorInfo:
    """Why an attempt failed: exception type, message and the last lines of its traceback."""

    type: str
    message: str
    traceback: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttemptReport:
    """What the worker measured for one attempt (wall-clock seconds since the epoch)."""

    started_at: float | None = None
    ended_at: float | None = None
    log_tail: str = ""
    log_path: str | None = None
    progress: float | None = None
    message: str = ""
    digests: dict[str, str] | None = None  # out -> digest of its value, for nodes a cache key reads
