"""fabric.context() inside a node: the on_preempt watcher."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(30)


def test_the_preempt_watcher_stops_when_the_attempt_ends_and_runs_handlers_once():
    import logging
    import threading
    import time as clock
    from pathlib import Path

    from fabric.context import NodeContext

    stopping = threading.Event()
    ran: list[int] = []
    ctx = NodeContext("s", "n", 1, Path("/nonexistent"), logging.getLogger("t"), stop_probe=stopping.is_set)
    ctx.on_preempt(lambda: ran.append(1))
    watchers = [t for t in threading.enumerate() if t.name == "fabric-preempt-watch"]
    assert watchers
    ctx.finish()
    watchers[0].join(2)
    assert not watchers[0].is_alive() and ran == []  # ended normally: no checkpoint, no thread left

    ctx2 = NodeContext("s", "n", 2, Path("/nonexistent"), logging.getLogger("t"), stop_probe=stopping.is_set)
    ctx2.on_preempt(lambda: ran.append(2))
    stopping.set()
    deadline = clock.monotonic() + 3
    while not ran and clock.monotonic() < deadline:
        clock.sleep(0.05)
    ctx2.run_preempt_handlers()  # the interrupt path too: still once
    assert ran == [2]
