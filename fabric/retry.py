"""The backoff schedule for calls that ride out a restart (the registry actor, the HTTP gateway)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

# How long a client call rides out a restarting registry (or gateway) before it raises, by default.
REGISTRY_RESTART_WAIT_S = 60.0


def backoff(retry_for: float, first: float = 0.1, longest: float = 2.0, jitter: float = 0.0,
            rng: random.Random | None = None) -> Iterator[float]:
    """Delays to sleep between tries, doubling up to `longest`, until `retry_for` seconds are spent.

    `jitter` (0..1) shortens each delay by a random fraction up to itself, so that many clients cut off
    by one outage do not come back in lock-step; a delay stays within [(1 - jitter) * d, d]."""
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within 0..1, not {jitter}")
    draw = (rng or random).random
    deadline = time.monotonic() + retry_for
    delay = first
    while time.monotonic() + delay < deadline:
        yield delay * (1.0 - jitter * draw())
        delay = min(delay * 2, longest)
