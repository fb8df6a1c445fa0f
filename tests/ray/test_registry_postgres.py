"""Recovery on PostgreSQL: the registry's record in a real PostgreSQL (FABRIC_STORE=postgresql://...) passes the
same kill-and-restart tests as on SQLite, and nothing of the record is written to FABRIC_HOME."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

import fabric as fb
from tests.conftest import REPO
from tests.ray.test_engine import dag, py

# The same tests as on SQLite, collected again here with this module's client (its registry on PostgreSQL).
from tests.ray.test_registry_restart import (  # noqa: F401
    _restart_registry,
    second_registry_is_refused,
    test_a_dag_survives_the_registry_dying_mid_run,
    test_the_kill_switch_survives_a_restart_and_is_audited,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def store_url(postgres_server: Any) -> str:
    return postgres_server.create_database("registry")


@pytest.fixture(scope="module")
def client(fabric_home: Path, store_url: str) -> Iterator[object]:
    """A local Ray whose registry keeps its record in PostgreSQL: the actor reads FABRIC_STORE from the env
    the local Ray node was started with (this process's)."""
    before = os.environ.get("FABRIC_STORE")
    os.environ["FABRIC_STORE"] = store_url
    os.chdir(REPO)
    try:
        yield fb.connect("local", num_cpus=2, num_gpus=4, home=str(fabric_home))
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("FABRIC_STORE", None)
        else:
            os.environ["FABRIC_STORE"] = before


def test_the_record_is_in_postgres_and_answers_after_a_restart(client, fabric_home, store_url):
    from fabric.record.postgres import PostgresStore

    done = client.submit(dag("kept", [py("a", "boom", params={"message": "kept error"}), py("b", "noop")],
                             edges=[("a", "b")]), {"submission_id": "kept-pg-001"})
    assert done.wait(60).state == "FAILED"
    _restart_registry(client)
    status = done.status()  # rebuilt by the restarted registry from the recorded events
    assert status.state == "FAILED" and status.node("b").state == "SKIPPED"
    assert "kept error" in status.node("a").error.message and "about to fail" in done.logs("a")
    assert not (fabric_home / "fabric.db").exists() and not (fabric_home / "cache.db").exists()
    with PostgresStore(store_url, read_only=True) as store:
        record = store.get_submission("kept-pg-001")
        assert record is not None and record.state == "FAILED"
        assert [e.target for e in store.events("kept-pg-001") if e.node_id is None][-1] == "FAILED"
    again = client.submit(dag("kept", [py("a", "boom", params={"message": "kept error"}), py("b", "noop")],
                              edges=[("a", "b")]), {"submission_id": "kept-pg-001"})
    assert again.id == "kept-pg-001" and not again.created  # idempotency survives the restart too


def test_a_second_registry_on_the_same_database_refuses_naming_the_first(client, store_url):
    second_registry_is_refused(client, store_url)
