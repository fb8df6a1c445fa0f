"""Small frozen value types shared by the layers: error details and what a worker reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
