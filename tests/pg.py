"""A real, throwaway PostgreSQL for the tests: `initdb` and `pg_ctl` in a temp dir, on a free loopback port.

The fixtures in tests/conftest.py start one server per test session and make one database per test. When
PostgreSQL cannot be started the PostgreSQL tests FAIL, saying why; they skip only with
FABRIC_TEST_NO_POSTGRES=1 set on purpose. scripts/test.sh installs Debian's `postgresql` when initdb is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

NO_POSTGRES = "FABRIC_TEST_NO_POSTGRES"


def find_tool(name: str) -> str | None:
    """initdb and pg_ctl are on PATH on some systems, under /usr/lib/postgresql/<major>/bin on Debian."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """One running server; `url(db)` addresses a database on it as the `postgres` superuser (trust auth)."""

    root: Path
    port: int
    pg_ctl: str
    run_as: list[str]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.run_as, self.pg_ctl, "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start in a fresh temp dir; raises RuntimeError saying what is missing or what failed."""
    initdb, pg_ctl = find_tool("initdb"), find_tool("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("initdb/pg_ctl not found (on PATH or under /usr/lib/postgresql/*/bin): install Debian's "
                           "`postgresql` package (scripts/test.sh does, as root), or set FABRIC_TEST_NO_POSTGRES=1 "
                           "to skip the PostgreSQL tests")
    root = Path(tempfile.mkdtemp(prefix="fabric-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the `postgres` user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no `postgres` user to run PostgreSQL as") from None
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else \
            ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    data, port = root / "data", _free_port()
    steps = [
        [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        [*run_as, pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
         f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"{' '.join(step)} failed ({done.returncode}): {done.stderr[-2000:]}{log[-2000:]}")
    return PostgresServer(root, port, pg_ctl, run_as)
