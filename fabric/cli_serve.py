"""`fabric run --gateway PORT`: the HTTP gateway beside an embedded run, kept up after it so that the models the
DAG served answer `POST /api/predict/{name}` until Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path


def start_gateway(port: int, home: str, host: str = "127.0.0.1") -> tuple[str, str]:
    """Start Serve's HTTP proxy and the gateway on this (already connected) Ray; returns (url, token)."""
    from ray import serve

    from serve.auth import mint_token
    from serve.gateway import build_app

    tokens = Path(os.environ.get("FABRIC_TOKENS") or Path(home) / "tokens.yaml")
    token = mint_token(tokens, "default", admin=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app({"tokens_file": str(tokens)}), name="fabric-gateway", route_prefix="/")
    return f"http://{host}:{port}", token


def hold() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
