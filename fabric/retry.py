"""The backoff schedule for calls that ride out a restart (the registry actor, the HTTP gateway)."""

from __future__ import annotations

import time
from collections.abc import Iterator


def backoff(retry_for: float, first: float = 0.1, longest: float = 2.0) -> Iterator[float]:
    """Delays to sleep between tries, doubling up to `longest`, until `retry_for` seconds are spent."""
    deadline = time.monotonic() + retry_for
    delay = first
    while time.monotonic() + delay < deadline:
        yield delay
        delay = min(delay * 2, longest)
