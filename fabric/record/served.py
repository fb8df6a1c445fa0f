"""Who owns each served model name, as recorded: one row per name (its owning team and the capacity its last
accepted deployment asked for), on every store, written only through the registry.

This is the authority the gateway checks for deploy, redeploy, promote and predict (fabric/actors/served.py).
It lives in the record, beside the submissions, because nothing but the registry writes the record: Ray's GCS
key-value store, where claims were kept before, is writable by any tenant code on the cluster.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from fabric.spec.policy import ServedName

_TABLE = """CREATE TABLE served_names (
        name TEXT PRIMARY KEY, owner TEXT NOT NULL, cpus {real} NOT NULL DEFAULT 0,
        replicas INTEGER NOT NULL DEFAULT 0, claimed_at {real} NOT NULL)"""
SQLITE_SERVED = (_TABLE.format(real="REAL"),)
POSTGRES_SERVED = (_TABLE.format(real="DOUBLE PRECISION"),)


class SqlServed:
    """The served-name methods for a SQL store with `_txn()` and a placeholder style `_P` (as SqlCatalogue)."""

    _P = "?"

    if TYPE_CHECKING:
        def _txn(self) -> AbstractContextManager[Any]: ...

    def claim_served(self, name: str, served: ServedName, at: float) -> tuple[ServedName, bool]:
        """Claim an unclaimed name for `served.owner`; returns the claim as it stands (another team's when it was
        there first: that one is kept) and whether this call made it."""
        p = self._P
        with self._txn() as conn:
            cursor = conn.execute(f"INSERT INTO served_names (name, owner, cpus, replicas, claimed_at) VALUES ({p}, "
                                  f"{p}, {p}, {p}, {p}) ON CONFLICT (name) DO NOTHING",
                                  (name, served.owner, served.cpus, served.replicas, at))
            created = bool(cursor.rowcount)
            row = conn.execute(f"SELECT owner, cpus, replicas FROM served_names WHERE name = {p}",
                               (name,)).fetchone()
        return ServedName(str(row[0]), float(row[1]), int(row[2])), created

    def update_served(self, name: str, served: ServedName) -> bool:
        """A new capacity for a name its owner redeployed (another owner's row is left alone); True when updated."""
        p = self._P
        with self._txn() as conn:
            cursor = conn.execute(f"UPDATE served_names SET cpus = {p}, replicas = {p} "
                                  f"WHERE name = {p} AND owner = {p}",
                                  (served.cpus, served.replicas, name, served.owner))
            return bool(cursor.rowcount)

    def release_served(self, name: str, owner: str) -> bool:
        """Withdraw `owner`'s claim (its submission was refused); another team's claim is never removed."""
        p = self._P
        with self._txn() as conn:
            return bool(conn.execute(f"DELETE FROM served_names WHERE name = {p} AND owner = {p}",
                                     (name, owner)).rowcount)

    def served_names(self, names: list[str] | None = None) -> dict[str, ServedName]:
        """Every claimed name, or those of `names` that are claimed."""
        p = self._P
        sql, args = "SELECT name, owner, cpus, replicas FROM served_names", tuple[str, ...]()
        if names is not None:
            if not names:
                return {}
            sql, args = sql + f" WHERE name IN ({', '.join([p] * len(names))})", tuple(names)
        with self._txn() as conn:
            rows = conn.execute(sql, args).fetchall()
        return {str(n): ServedName(str(o), float(c), int(r)) for n, o, c, r in rows}


class MemoryServed:
    """The served-name methods in memory (MemoryStore)."""

    def __init__(self) -> None:
        self._served_lock = threading.Lock()
        self._served: dict[str, ServedName] = {}

    def claim_served(self, name: str, served: ServedName, at: float) -> tuple[ServedName, bool]:
        with self._served_lock:
            known = self._served.setdefault(name, served)
            return known, known is served

    def update_served(self, name: str, served: ServedName) -> bool:
        with self._served_lock:
            known = self._served.get(name)
            if known is None or known.owner != served.owner:
                return False
            self._served[name] = served
            return True

    def release_served(self, name: str, owner: str) -> bool:
        with self._served_lock:
            known = self._served.get(name)
            if known is None or known.owner != owner:
                return False
            del self._served[name]
            return True

    def served_names(self, names: list[str] | None = None) -> dict[str, ServedName]:
        with self._served_lock:
            return {n: s for n, s in self._served.items() if names is None or n in names}


__all__ = ["POSTGRES_SERVED", "SQLITE_SERVED", "MemoryServed", "SqlServed"]
