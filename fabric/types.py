"""Small frozen value types shared by the layers: error details and what a worker reports."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any


def new_submission_id(now: float | None = None) -> str:
    """`sub-YYYYMMDD-HHMMSS-xxxxxx` (UTC): sortable by time, unique by its random tail."""
    return time.strftime("sub-%Y%m%d-%H%M%S-", time.gmtime(time.time() if now is None else now)) + secrets.token_hex(3)


_TEAM_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


def team_prefix(team: str) -> str:
    """The namespace of a team's submission ids: `<team>:`, or `t<digest>:` for a team name that is long or
    has other characters. It never holds ':', so the first ':' ends it and two teams never share one."""
    part = team if _TEAM_PART.match(team) else "t" + hashlib.sha256(team.encode()).hexdigest()[:12]
    return part + ":"


def team_submission_id(team: str, key: str) -> str:
    """The stored id of team `team`'s submission keyed `key`: idempotency keys are per team, so team B's
    `sub-1` is `b:sub-1` and never meets team A's `a:sub-1`. A key already in the team's namespace stays."""
    prefix = team_prefix(team)
    return key if key.startswith(prefix) else prefix + key


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
    skipped: str = ""  # why the node did not run its code (its condition was false, an input was skipped)


class MapResults(list[Any]):
    """What a map node's reader gets: its children's outputs in item order. With `min_success_ratio`, only the
    successes: `missing` holds the indices of the items whose child failed."""

    def __init__(self, values: Any = (), missing: tuple[int, ...] = ()) -> None:
        super().__init__(values)
        self.missing = tuple(missing)

    def __reduce__(self) -> tuple[Any, ...]:
        return (MapResults, (list(self), self.missing))
