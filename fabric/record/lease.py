"""One registry per store: the lease a registry holds on its record while it runs.

SQLite: an exclusive `flock` on `<db>.lock` beside the database, with the holder (host, pid, since) written in it.
PostgreSQL: a session advisory lock on a fixed key, with the holder in the one-row `registry_lease` table.
Both are released on a clean close and lost when the holder's process dies (the kernel drops the flock; the
server ends the session, within ~30 s of TCP keepalives when the holder's machine vanished), so a new
cluster's registry takes over only once the old one released the lease or died. A second registry on a
held store gets STORE_LEASED naming the holder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from fabric.errors import ErrorCode, FabricError

log = logging.getLogger(__name__)

LEASE_KEY = 0x46414252_4C454153  # "FABRLEAS": the advisory lock a registry holds on a PostgreSQL store
_POLL_S = 0.2


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: float

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), time.time())

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"the registry of pid {self.pid} on host {self.host}, since {since}"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(str(data["host"]), int(data["pid"]), float(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None


class Lease(Protocol):
    holder: Holder
    lost: bool  # another registry holds the store now: this one must stop writing to it
    on_lost: Callable[[], None] | None  # called once, from the watchdog, when `lost` becomes true

    def release(self) -> None: ...


def leased(where: str, holder: Holder | None) -> FabricError:
    who = holder.describe() if holder else "another registry (it did not say who)"
    return FabricError(
        f"the store at {where} is held by {who}", code=ErrorCode.STORE_LEASED, where=where,
        fix=f"only one registry may run on a store: use that one (same FABRIC_HOME/FABRIC_STORE and Ray cluster), "
            f"or stop it first{f' (pid {holder.pid} on {holder.host})' if holder else ''}; a registry that died "
            "releases its lease by itself")


class FileLease:
    """An exclusive flock on `<db>.lock`; the file stays (removing it would race a new holder)."""

    def __init__(self, db: str | Path, *, wait_s: float = 0.0) -> None:
        self.lost = False  # a flock is held for as long as this process lives: never lost
        self.on_lost: Callable[[], None] | None = None
        self.path = Path(f"{db}.lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(self._fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = Holder.parse(os.pread(self._fd, 4096, 0).decode(errors="replace"))
                    os.close(self._fd)
                    raise leased(str(Path(db)), holder) from None
                time.sleep(_POLL_S)
        self.holder = Holder.me()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(asdict(self.holder)).encode(), 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd < 0:
            return
        os.ftruncate(self._fd, 0)  # nobody holds it now: a reader must not name us
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1


class PostgresLease:
    """A session advisory lock on LEASE_KEY, held by a connection of its own for as long as the registry runs.

    A watchdog checks that connection every `check_s`: if it broke (PostgreSQL restarted, a proxy cut it), the
    session's lock went with it, so the watchdog reconnects and takes the lock again. Should another registry
    have taken it meanwhile, `lost` is set, an error logged and `on_lost` called (the registry stops taking and
    dispatching work): the lease cannot be won back from a live holder.
    """

    def __init__(self, url: str, *, wait_s: float = 0.0, check_s: float = 5.0) -> None:
        from fabric.record.postgres import redact

        self._url, self._where = url, redact(url)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lost = False
        self.on_lost: Callable[[], None] | None = None
        self.holder = Holder.me()
        self._conn: Any = None
        deadline = time.monotonic() + wait_s
        while not self._acquire():
            if time.monotonic() >= deadline:
                raise leased(self._where, self._current_holder())
            time.sleep(_POLL_S)
        self._watchdog = threading.Thread(target=self._watch, args=(check_s,), name="fabric-lease", daemon=True)
        self._watchdog.start()

    def _current_holder(self) -> Holder | None:
        """Who holds the lease now, as it wrote itself into `registry_lease`; closes our connection."""
        try:
            row = self._conn.execute("SELECT holder FROM registry_lease WHERE id = 1").fetchone()
            return Holder.parse(row[0]) if row else None
        except Exception:  # noqa: BLE001 - the refusal stands; it just cannot say who holds the lease
            return None
        finally:
            self._conn.close()

    def _acquire(self) -> bool:
        """(Re)connect if needed and try the lock once; on success write who holds it."""
        from fabric.record.postgres import connect, unavailable

        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._url)
                # The server notices a vanished holder (machine gone, no FIN) within idle + interval * count s.
                self._conn.execute("SET tcp_keepalives_idle = 10")
                self._conn.execute("SET tcp_keepalives_interval = 5")
                self._conn.execute("SET tcp_keepalives_count = 4")
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEASE_KEY,)).fetchone()
            if not (row and row[0]):
                return False
            self._conn.execute("INSERT INTO registry_lease (id, holder) VALUES (1, %s) ON CONFLICT (id) DO UPDATE "
                               "SET holder = excluded.holder", (json.dumps(asdict(self.holder)),))
            return True
        except FabricError:
            raise
        except Exception as exc:
            if self._conn is not None:
                self._conn.close()
            raise unavailable(self._url, exc) from exc

    def _watch(self, check_s: float) -> None:
        while not self._stop.wait(check_s):
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._conn.execute("SELECT 1")
                    continue
                except Exception:  # noqa: BLE001 - the session is gone, and the lock with it
                    log.warning("the lease connection to %s broke: taking the lease again", self._where)
                try:
                    self.lost = not self._acquire()
                except FabricError as exc:
                    log.warning("cannot take the lease again yet: %s", exc.message)
                    continue
                if self.lost:
                    log.error("the lease on %s was taken by another registry while this one was cut off",
                              self._where)
                    break
        if self.lost and self.on_lost is not None:  # outside the lock: the callback may release the lease
            try:
                self.on_lost()
            except Exception:  # noqa: BLE001 - the loss is logged above; the watchdog has nothing left to do
                log.exception("the registry's reaction to losing its lease failed")

    def release(self) -> None:
        self._stop.set()
        with self._lock:
            if self._conn is None or self._conn.closed:
                return
            try:
                if not self.lost:
                    self._conn.execute("DELETE FROM registry_lease WHERE id = 1")
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (LEASE_KEY,))
            except Exception:  # noqa: BLE001 - closing the session below releases the lock in any case
                pass
            finally:
                self._conn.close()


LEASE_WAIT_S = 15.0  # a restarted or new registry waits this long for the old holder's process to end
LEASE_LOST = "its lease was taken by another registry while this one was cut off from the store"
# What changes the record; every other Store method only reads it.
WRITES = frozenset({"add_submission", "set_state", "append_events", "put_log", "delete_submission_data",
                    "add_pipeline_version", "add_backfill", "set_backfill_state", "claim_served",
                    "update_served", "release_served"})


def open_lease(home: str, kind: str = "sqlite", store: Any = None, wait_s: float = LEASE_WAIT_S) -> Lease | None:
    """The registry's lease on its store; a memory store is its own and needs none. When the lease is refused,
    `store` (the registry's, opened first) is closed before STORE_LEASED is raised."""
    from fabric.record.postgres import is_postgres_url

    try:
        if kind == "memory":
            return None
        if is_postgres_url(kind):
            return PostgresLease(kind, wait_s=wait_s)
        return FileLease(Path(home) / "fabric.db", wait_s=wait_s)
    except BaseException:
        getattr(store, "close", lambda: None)()
        raise


class FencedStore:
    """A store as its registry may use it: every write answers STORE_LEASED once the lease is lost (the record
    is the new holder's now); reads go on."""

    def __init__(self, store: Any, lease: Lease | None) -> None:
        self._inner, self._lease = store, lease

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in WRITES or self._lease is None:
            return attr
        lease = self._lease

        def write(*args: Any, **kwargs: Any) -> Any:
            if lease.lost:
                raise FabricError(f"this registry no longer holds its store: {LEASE_LOST}",
                                  code=ErrorCode.STORE_LEASED, where="store",
                                  fix="use the registry that holds the store now (fabric doctor names it); this "
                                      "one takes and dispatches no more work: restart it once that one stopped")
            return attr(*args, **kwargs)

        return write
