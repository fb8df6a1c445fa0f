"""A registry that lost its store's lease (another registry took the PostgreSQL store while it was cut off) stops:
it refuses submits and every write with STORE_LEASED, dispatches nothing more, and cancels what it had in flight."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from fabric.errors import ErrorCode, FabricError
from fabric.execute.engine import Engine
from fabric.record import MemoryStore
from fabric.record.cache import MemoryCacheIndex
from fabric.record.lease import LEASE_LOST, FencedStore, PostgresLease
from fabric.record.metrics import FabricMetrics
from tests.unit.test_engine_seams import FakeBackend, chain, submit, wait_for
from tests.unit.test_lease import _cut, _wait_for

pytestmark = pytest.mark.timeout(60)


def test_a_fenced_engine_dispatches_nothing_more_cancels_its_attempts_and_refuses_new_work(tmp_path):
    backend, lease = FakeBackend(), SimpleNamespace(lost=False)
    store = FencedStore(MemoryStore(), lease)  # type: ignore[arg-type]
    engine = Engine(store, backend=backend, home=str(tmp_path), artifacts=str(tmp_path / "artifacts"),
                    persist_outputs=False, cache_index=MemoryCacheIndex(), metrics=FabricMetrics())
    try:
        doc = chain()
        doc["nodes"].append({"id": "c", "kind": "python_task", "entrypoint": "m:c", "ins": ["x"]})
        doc["edges"].append({"from": "a", "to": "c"})
        submit(engine, doc)
        wait_for(lambda: len(backend.submitted) == 3, "a and its eager children")
        lease.lost = True  # as the watchdog finds it, and then calls back:
        engine.fence(LEASE_LOST)
        assert sorted(backend.cancelled) == [("a", True), ("b", True), ("c", True)]
        backend.finish("a")  # an attempt that ends after the fence changes nothing: no retry, no record
        time.sleep(0.3)
        assert len(backend.submitted) == 3
        with pytest.raises(FabricError) as info:
            submit(engine, chain(), sid="s2")
        assert info.value.code == ErrorCode.STORE_LEASED and LEASE_LOST in info.value.message
        assert engine.fenced == LEASE_LOST
    finally:
        engine.shutdown()


def _dag() -> dict[str, Any]:
    return {"version": 1, "pipeline_id": "p", "nodes": [{"id": "a", "kind": "python_task", "entrypoint": "m:a"}]}


def test_a_registry_whose_postgres_lease_is_taken_refuses_work_with_store_leased(postgres_url, tmp_path,
                                                                                  monkeypatch):
    from fabric.actors.registry import Registry

    monkeypatch.setenv("FABRIC_STORE", postgres_url)
    registry = Registry(str(tmp_path / "home"), check_feasibility=False)
    lease = registry._lease
    assert isinstance(lease, PostgresLease) and registry.submit(_dag())["created"]
    with lease._lock:  # the watchdog is held off while another registry takes the freed lease
        _cut(postgres_url, lease)
        other = PostgresLease(postgres_url, wait_s=5)
    try:
        assert _wait_for(lambda: registry._engine.fenced is not None, timeout=20)  # the watchdog checks every 5 s
        assert lease.lost
        for refused in (lambda: registry.submit(_dag()), lambda: registry.kill_switch(True, "x", "admin"),
                        lambda: registry.audit("_promote:m", "a", "b", "why", "admin")):
            with pytest.raises(FabricError) as info:
                refused()
            assert info.value.code == ErrorCode.STORE_LEASED and "lease" in info.value.message
        assert registry.ping() == "ok"  # reads still answer, from the record
        with pytest.raises(FabricError):  # and the new holder keeps the store
            PostgresLease(postgres_url)
    finally:
        registry._engine.shutdown()
        lease.release()
        other.release()
