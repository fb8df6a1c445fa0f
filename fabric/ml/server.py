"""The MLflow tracking server of a cluster's head: one command line, started by `fabric up` and the tests,
and written the same way into cluster.yaml and k8s/ (tests keep them in step)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_PORT = 5000


MLFLOW_SCHEMA = "mlflow"


def backend_store(home: str, store: str = "sqlite") -> str:
    """The server's backend store, beside the registry's record (FABRIC_STORE): a SQLite file in FABRIC_HOME, or,
    with the record on PostgreSQL, the same database in a schema of its own (MLflow's tables never meet fabric's),
    so a cluster whose workers share no disk keeps its runs and models in the database it already backs up."""
    if not store.startswith(("postgresql://", "postgres://")):
        return f"sqlite:///{Path(home).resolve() / 'mlflow.db'}"
    parts = urlsplit(store)
    query = [*parse_qsl(parts.query), ("options", f"-csearch_path={MLFLOW_SCHEMA}")]
    return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, urlencode(query), ""))


def prepare_backend(store: str) -> None:
    """Create the PostgreSQL schema MLflow's own migrations then fill (nothing to do for SQLite)."""
    if store.startswith(("postgresql://", "postgres://")):
        import psycopg  # the `postgres` extra, as for the record itself

        with psycopg.connect(store, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {MLFLOW_SCHEMA}")


def server_env(home: str, store: str) -> dict[str, str]:
    """Environment for the server: a PostgreSQL backend URL carries a password, so it goes in MLflow's
    MLFLOW_BACKEND_STORE_URI, never on the command line (which every user of the head can read in `ps`)."""
    # MLflow's job runner (GenAI evaluation and trace roll-ups, unused here) starts eight consumer processes of
    # ~270 MB each in sessions of their own, which outlive the server's process group when it is stopped.
    no_jobs = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if store.startswith(("postgresql://", "postgres://")):
        return {**no_jobs, "MLFLOW_BACKEND_STORE_URI": backend_store(home, store)}
    return no_jobs


def artifacts_destination(artifacts: str) -> str:
    """Where the server keeps the artifacts nodes upload through it: `<artifact store>/mlflow` (a directory
    or an s3:// / gs:// URI, as FABRIC_ARTIFACTS)."""
    return f"{artifacts.rstrip('/')}/mlflow"


def server_command(home: str, artifacts: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                   allowed_hosts: str | None = None, store: str = "sqlite") -> list[str]:
    """`mlflow server` with its backend store next to the registry's and its artifacts in the artifact store,
    served through the server (`--serve-artifacts`), so a node needs only the server's URL, never the store's
    credentials or disk. One worker process: it is a small head-side service."""
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow) if mlflow.exists() else "mlflow", "server", "--host", host, "--port", str(port),
               "--workers", "1", "--serve-artifacts", "--artifacts-destination", artifacts_destination(artifacts)]
    if "MLFLOW_BACKEND_STORE_URI" not in server_env(home, store):  # PostgreSQL's URL goes in the environment
        command += ["--backend-store-uri", backend_store(home, store)]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    return command


@dataclass
class TrackingServer:
    """A running `mlflow server` this process started; `uri` is what nodes set as FABRIC_MLFLOW_URI."""

    process: subprocess.Popen[bytes]
    uri: str

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: the server and its worker go
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def start_server(home: str, artifacts: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 timeout: float = 60.0, log: Path | None = None, store: str = "sqlite") -> TrackingServer:
    """Start the tracking server and wait until it answers /health; its output goes to `log`
    (default `<home>/mlflow-server.log`). Raises RuntimeError with the log's tail when it does not come up."""
    Path(home).mkdir(parents=True, exist_ok=True)
    log = log or Path(home) / "mlflow-server.log"
    if "://" not in artifacts:
        Path(artifacts_destination(artifacts)).mkdir(parents=True, exist_ok=True)
    prepare_backend(store)
    with open(log, "ab") as out:
        process = subprocess.Popen(server_command(home, artifacts, host, port, store=store), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, **server_env(home, store)})
    served = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    server = TrackingServer(process, f"http://{served}:{port}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mlflow server did not start on {host}:{port}; its log ({log}):\n{tail}")
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> None:
    """`python -m fabric.ml.server [--host H] [--port P] [--allowed-hosts A]`: exec the tracking server for
    this node's FABRIC_HOME and FABRIC_ARTIFACTS, the way cluster.yaml's head and k8s/'s head sidecar run it."""
    import argparse

    from fabric.settings import settings

    parser = argparse.ArgumentParser(prog="python -m fabric.ml.server", description=main.__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--allowed-hosts", default=None, help="MLflow's Host header patterns (default: its own)")
    args = parser.parse_args(argv)
    config = settings()
    if "://" not in config.artifacts:
        Path(artifacts_destination(config.artifacts)).mkdir(parents=True, exist_ok=True)
    prepare_backend(config.store)
    command = server_command(config.home, config.artifacts, args.host, args.port, args.allowed_hosts, config.store)
    os.execvpe(command[0], command, {**os.environ, **server_env(config.home, config.store)})


if __name__ == "__main__":
    main()
