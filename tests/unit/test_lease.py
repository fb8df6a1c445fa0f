"""One registry per store: the lease (fabric/record/lease.py) held by one process refuses a second one, naming the
holder, and passes on once the holder released it or died; on SQLite (flock) and on a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.errors import ErrorCode, FabricError
from fabric.record.lease import FileLease, Holder, Lease, PostgresLease

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, Callable[..., Lease]]:
    """(kind, where, open a lease on it)."""
    if request.param == "sqlite":
        db = str(tmp_path / "home" / "fabric.db")
        return "sqlite", db, lambda **kw: FileLease(db, **kw)
    from fabric.record.postgres import PostgresStore

    url = request.getfixturevalue("postgres_url")
    PostgresStore(url).close()  # the schema (with its registry_lease table) is the store's to create
    return "postgres", url, lambda **kw: PostgresLease(url, **kw)


@pytest.fixture
def holder_process(store: tuple[str, str, Any]) -> Iterator[subprocess.Popen[str]]:
    """Another process that takes the lease, says so, and holds it until its stdin closes."""
    kind, where, _ = store
    opener = f"FileLease({where!r})" if kind == "sqlite" else f"PostgresLease({where!r})"
    code = textwrap.dedent(f"""
        import sys
        from fabric.record.lease import FileLease, PostgresLease
        lease = {opener}
        print("held", flush=True)
        sys.stdin.read()
        lease.release()
        print("released", flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    yield child
    if child.poll() is None:
        child.kill()
    child.wait(10)


def test_a_second_holder_is_refused_with_the_holder_named_until_the_first_releases(store, holder_process):
    _, where, open_lease = store
    with pytest.raises(FabricError) as info:
        open_lease()
    error = info.value
    assert error.code == ErrorCode.STORE_LEASED
    assert f"pid {holder_process.pid}" in error.message and socket.gethostname() in error.message
    assert " UTC" in error.message and f"pid {holder_process.pid}" in error.fix
    assert error.where == where  # the database file, or the PostgreSQL URL (without a password)
    holder_process.stdin.close()  # the holder releases on a clean shutdown
    assert holder_process.stdout.readline().strip() == "released"
    lease = open_lease()
    assert lease.holder.pid == os.getpid()
    lease.release()


def test_a_dead_holders_lease_passes_on_by_itself(store, holder_process):
    _, _, open_lease = store
    with pytest.raises(FabricError):
        open_lease()
    os.kill(holder_process.pid, signal.SIGKILL)  # no release: the kernel or the server drops the lock
    holder_process.wait(10)
    lease = open_lease(wait_s=10)  # the server may take a moment to end the dead session
    assert lease.holder.pid == os.getpid()
    lease.release()


def test_one_process_cannot_hold_it_twice_and_release_is_idempotent(store):
    _, _, open_lease = store
    first = open_lease()
    with pytest.raises(FabricError) as info:
        open_lease()
    assert f"pid {os.getpid()}" in info.value.message
    first.release()
    first.release()
    second = open_lease()
    second.release()


def test_the_holder_record_round_trips_and_bad_text_names_nobody():
    me = Holder.me()
    assert Holder.parse('{"host": "h", "pid": 7, "since": 0}') == Holder("h", 7, 0.0)
    assert Holder.parse("") is None and Holder.parse("{}") is None and Holder.parse("not json") is None
    assert "1970-01-01 00:00:00 UTC" in Holder("h", 7, 0.0).describe() and me.pid == os.getpid()


def _cut(url: str, lease: PostgresLease) -> None:
    """End the lease's session from outside, as a PostgreSQL restart or a proxy would."""
    import psycopg

    pid = lease._conn.info.backend_pid
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_cut_postgres_session_is_noticed_and_the_lease_taken_again(postgres_url):
    from fabric.record.postgres import PostgresStore

    PostgresStore(postgres_url).close()
    lease = PostgresLease(postgres_url, check_s=0.1)
    first_backend = lease._conn.info.backend_pid
    _cut(postgres_url, lease)
    def retaken() -> bool:
        with lease._lock:  # not halfway through the watchdog's reconnect-and-lock
            return not lease._conn.closed and lease._conn.info.backend_pid != first_backend

    assert _wait_for(retaken)
    with pytest.raises(FabricError) as info:  # held again: a second registry is still refused
        PostgresLease(postgres_url)
    assert f"pid {os.getpid()}" in info.value.message and not lease.lost
    lease.release()


def test_a_lease_taken_by_another_while_cut_off_is_reported_lost(postgres_url):
    from fabric.record.postgres import PostgresStore

    PostgresStore(postgres_url).close()
    lease = PostgresLease(postgres_url, check_s=0.5)
    with lease._lock:  # the watchdog is held off while another registry takes the freed lease
        _cut(postgres_url, lease)
        other = PostgresLease(postgres_url, wait_s=5)
    assert _wait_for(lambda: lease.lost)
    lease.release()  # releases nothing of the new holder's
    with pytest.raises(FabricError):
        PostgresLease(postgres_url)
    other.release()
