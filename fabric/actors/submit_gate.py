"""When a submission may start: one at a time per idempotency key, any number at once across keys, and none
while the kill-switch changes.

Submits with different keys overlap, so their records reach the store together and share one commit (the
store's group commit). Two racing submits with the same key still run one after the other, so the second
finds the first's record and starts nothing. Turning the kill-switch on waits for the starts already past
their check, and holds new ones back until it is recorded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fabric.types import team_submission_id


class SubmitGate:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._keys: set[str | None] = set()  # the ids being started now (never None)
        self._starting = 0
        self._switching = False

    @contextmanager
    def starting(self, team: str | None, key: str | None) -> Iterator[None]:
        """Held while a submission is looked up by its key and started (no key: a fresh id, never raced)."""
        raced = None if key is None else team_submission_id(team, key) if team else key
        with self._changed:
            while self._switching or raced in self._keys:
                self._changed.wait()
            self._starting += 1
            if raced is not None:
                self._keys.add(raced)
        try:
            yield
        finally:
            with self._changed:
                self._starting -= 1
                self._keys.discard(raced)
                self._changed.notify_all()

    @contextmanager
    def switching(self) -> Iterator[None]:
        """Held while the kill-switch changes: no start is under way, and none begins."""
        with self._changed:
            while self._switching:
                self._changed.wait()
            self._switching = True
            while self._starting:
                self._changed.wait()
        try:
            yield
        finally:
            with self._changed:
                self._switching = False
                self._changed.notify_all()
