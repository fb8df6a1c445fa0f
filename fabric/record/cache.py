"""The cache index: a node's cache key (its spec, code version and input data digests) -> the finished
node whose persisted outputs any later identical node may reuse.

Kept in its own SQLite file beside the store (`$FABRIC_HOME/cache.db`): the index is a derived, rebuildable
thing, so it has no migrations to share with the audit store, and losing it only costs recomputation. With a
PostgreSQL store it is the `cache` table of that database (created by fabric/record/postgres.py's migrations),
so a new cluster's registry finds the old one's entries.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class CacheEntry:
    key: str
    submission_id: str
    node_id: str
    outs: tuple[str, ...]  # the result slots persisted under <artifacts>/<submission>/<node>/outputs
    digests: dict[str, str] = field(default_factory=dict)  # out -> digest of its value (chains the next key)
    created_at: float = 0.0


class CacheIndex(Protocol):
    def get(self, key: str) -> CacheEntry | None: ...
    def put(self, entry: CacheEntry) -> None: ...
    def drop(self, key: str) -> None: ...


class MemoryCacheIndex:
    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}

    def get(self, key: str) -> CacheEntry | None:
        return self._entries.get(key)

    def put(self, entry: CacheEntry) -> None:
        self._entries[entry.key] = entry

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)


class SqliteCacheIndex:
    """One table, key -> entry; the newest finished node wins a key (its outputs are the freshest copy)."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=5.0)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, submission_id TEXT NOT NULL, "
                           "node_id TEXT NOT NULL, outs TEXT NOT NULL, digests TEXT NOT NULL, created_at REAL)")

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            row = self._conn.execute("SELECT key, submission_id, node_id, outs, digests, created_at FROM cache "
                                     "WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return CacheEntry(row[0], row[1], row[2], tuple(json.loads(row[3])), json.loads(row[4]), row[5] or 0.0)

    def put(self, entry: CacheEntry) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?, ?)",
                               (entry.key, entry.submission_id, entry.node_id, json.dumps(list(entry.outs)),
                                json.dumps(entry.digests), entry.created_at))

    def drop(self, key: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM cache WHERE key = ?", (key,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresCacheIndex:
    """The same index as a table of the PostgreSQL store's database (its own connection)."""

    def __init__(self, url: str) -> None:
        from fabric.record.postgres import PostgresStore, connect

        PostgresStore(url, flush_interval_s=60).close()  # migrates the database, so the `cache` table exists
        self._lock = threading.Lock()
        self._url = url
        self._conn: Any = connect(url)

    def _entry(self, row: tuple[Any, ...] | None) -> CacheEntry | None:
        if row is None:
            return None
        return CacheEntry(row[0], row[1], row[2], tuple(json.loads(row[3])), json.loads(row[4]), row[5] or 0.0)

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            row = self._conn.execute("SELECT key, submission_id, node_id, outs, digests, created_at FROM cache "
                                     "WHERE key = %s", (key,)).fetchone()
        return self._entry(row)

    def put(self, entry: CacheEntry) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO cache VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET "
                "submission_id = excluded.submission_id, node_id = excluded.node_id, outs = excluded.outs, "
                "digests = excluded.digests, created_at = excluded.created_at",
                (entry.key, entry.submission_id, entry.node_id, json.dumps(list(entry.outs)),
                 json.dumps(entry.digests), entry.created_at))

    def drop(self, key: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM cache WHERE key = %s", (key,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
