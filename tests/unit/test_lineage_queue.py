"""The lineage observer's bounded queue: when it is full, a run's events are counted and read back from the
store once the queue has drained, in order, none twice and none lost; the engine's thread never waits."""

from __future__ import annotations

import threading
import time

import pytest

from fabric.actors.observe import ObservedStore, Observer
from fabric.record import Event, MemoryStore

pytestmark = pytest.mark.timeout(60)


def test_a_full_queue_defers_events_and_they_are_observed_later_in_order():
    inner = MemoryStore()
    observer = Observer(inner, None, max_queued=5)
    seen: list[tuple[str, str]] = []
    gate = threading.Event()

    def observe(event: Event) -> list:
        gate.wait(10)  # the sink is stuck: the queue fills up behind it
        seen.append((event.submission_id, event.target))
        return []

    observer._observe = observe  # type: ignore[method-assign]
    store = ObservedStore(inner, observer)
    started = time.perf_counter()
    for i in range(40):
        store.append_events([Event("s1", f"n{i}", "PENDING", f"T{i:02d}", float(i)),
                             Event("s2", f"n{i}", "PENDING", f"U{i:02d}", float(i))])
    assert time.perf_counter() - started < 2.0, "appending waited on the stuck sink"
    assert observer.deferred > 0  # counted, not dropped
    gate.set()
    assert observer.drain(30)
    for sid, prefix in (("s1", "T"), ("s2", "U")):
        assert [t for s, t in seen if s == sid] == [f"{prefix}{i:02d}" for i in range(40)]
