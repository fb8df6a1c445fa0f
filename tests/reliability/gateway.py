"""A real Serve gateway on loopback over the module's local Ray, with one token per team and an admin."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from serve.auth import mint_token


@dataclass
class Gateway:
    url: str
    http: httpx.Client
    tokens: dict[str, str]  # "research", "trading", "admin"

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def sdk(self, who: str):  # noqa: ANN201 - fabric.remote.HttpClient
        import fabric as fb

        return fb.connect(self.url, token=self.tokens[who])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_gateway(state_dir: Path, replicas: int = 2) -> Iterator[Gateway]:
    """Start Serve and the gateway app (`replicas` replicas) on a free loopback port; shut Serve down after."""
    from ray import serve

    from fabric.cli.gateway import start_gateway

    tokens_file = state_dir / "tokens.yaml"
    tokens = {"research": mint_token(tokens_file, "research"), "trading": mint_token(tokens_file, "trading"),
              "admin": mint_token(tokens_file, "ops", admin=True)}
    # Research may read the canary scope (tests/ray/test_reliability_gateway.py); fabric/schedule/grants.py.
    with tokens_file.open("a") as grants:
        grants.write("grants:\n  research: {secrets_scopes: [canary]}\n")
    url = start_gateway(tokens_file, _free_port(), replicas=replicas)
    with httpx.Client(base_url=url, timeout=60) as http:
        yield Gateway(url, http, tokens)
    serve.shutdown()
