"""The one way the HTTP gateway is started on a connected Ray: `fabric up`, `fabric run --gateway` and the tests."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

GATEWAY_APP = "fabric-gateway"


def tokens_path() -> Path:
    """The gateway's tokens file: FABRIC_TOKENS, else <FABRIC_HOME>/tokens.yaml (fabric/settings.py)."""
    from fabric.settings import settings

    return Path(settings().tokens)


def start_gateway(tokens_file: Path, port: int, host: str = "127.0.0.1", replicas: int = 1) -> str:
    """Start Serve's HTTP proxy and the gateway app (`replicas` replicas) on this already connected Ray;
    return its URL. Tokens are minted by the caller (`serve.auth.mint_token`): the gateway only reads them."""
    from ray import serve

    from fabric.client import connected_key_file
    from serve.gateway import build_app  # the application package, loaded only when a gateway is wanted

    serve.start(http_options={"host": host, "port": port})
    # The path of the control key (not the key): the replicas, on the head, read it as this driver did.
    args = {"tokens_file": str(tokens_file), "num_replicas": str(replicas), "control_key_file": connected_key_file()}
    serve.run(build_app({k: v for k, v in args.items() if v}), name=GATEWAY_APP, route_prefix="/")
    return f"http://{host}:{port}"


def mint_token(tokens_file: Path, team: str, admin: bool = False, role: str | None = None) -> str:
    """A new token for `team` (`role`: admin, developer or runner), its hash added to the tokens file; the token
    itself is returned once."""
    from serve.auth import mint_token as mint

    return mint(tokens_file, team, admin, role)


def hold() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
