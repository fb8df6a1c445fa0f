"""The gateway's guard as Serve's proxy runs it (serve/proxy_guard.py), on a small FastAPI app, no Ray: it refuses
what the gateway would (a known team over its rate, a large body) and passes on what only the gateway can answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.middleware import Middleware

from fabric.settings import settings
from serve.auth import mint_token
from serve.guard import GuardState, Limits, Tokens
from serve.proxy_guard import ProxyGuard, RetryAfters, middlewares

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[TestClient, str, list[Any]]]:
    tokens = tmp_path / "tokens.yaml"
    token = mint_token(tokens, "research")
    reached: list[Any] = []  # what got past the proxy: the replica would see these
    api = FastAPI()

    @api.post("/api/orch/submit")
    async def submit(request: Request) -> dict[str, int]:
        reached.append(await request.body())
        return {"ok": 1}

    @api.post("/models/echo")
    async def echo(request: Request) -> dict[str, int]:
        reached.append(await request.body())
        return {"ok": 1}

    state = GuardState()
    state.configure(Tokens(tokens), Limits(rate=100.0, write_rate=2.0, burst_s=1.0, max_body_bytes=1000))
    api.add_middleware(ProxyGuard, state=state)
    with TestClient(api) as client:
        yield client, token, reached


def test_a_known_team_over_its_rate_is_refused_by_the_proxy_before_a_replica_sees_it(proxied):
    client, token, reached = proxied
    auth = {"Authorization": f"Bearer {token}"}
    answers = [client.post("/api/orch/submit", content=b"{}", headers=auth) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429] and len(reached) == 2
    assert answers[2].headers["X-Fabric-Refused-By"] == "proxy" and answers[2].headers["Retry-After"]
    assert answers[2].json()["code"] == "RATE_LIMITED"
    large = client.post("/api/orch/submit", content=b"x" * 2000, headers=auth)
    assert large.status_code in (413, 429) and large.headers["X-Fabric-Refused-By"] == "proxy" and len(reached) == 2


def test_an_unknown_token_and_other_apps_routes_pass_on_untouched(proxied):
    client, _, reached = proxied
    for _ in range(4):  # no token the proxy knows: the replica answers (its 401), never the proxy
        assert client.post("/api/orch/submit", content=b"{}", headers={"Authorization": "Bearer nope"}).status_code \
            == 200
    assert client.post("/models/echo", content=b"y" * 5000).status_code == 200  # another app: no body limit here
    assert len(reached) == 5


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    settings.cache_clear()  # the proxy reads its settings once, as each process does
    yield
    settings.cache_clear()


def test_the_proxy_guards_only_where_the_tokens_file_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        fresh_settings: None):
    monkeypatch.setenv("FABRIC_HOME", str(tmp_path))
    monkeypatch.delenv("FABRIC_TOKENS", raising=False)
    assert middlewares() == []  # a worker node's proxy: the replicas guard alone
    mint_token(tmp_path / "tokens.yaml", "research")
    settings.cache_clear()
    [guard] = middlewares()
    assert isinstance(guard, Middleware) and guard.cls is ProxyGuard
    monkeypatch.setenv("FABRIC_GATEWAY_RATE", "not a number")
    settings.cache_clear()
    assert middlewares() == []  # settings that do not parse: said in the log, and the proxy still starts


def test_a_connection_that_asks_before_its_retry_after_waits_out_the_rest():
    clock = [100.0]
    retry_afters = RetryAfters(clock=lambda: clock[0])
    mine, other = ("10.0.0.1", 5000), ("10.0.0.1", 5001)
    assert retry_afters.left(mine) == 0.0  # never told anything: not held
    retry_afters.told(mine, 1.0)  # a 429 with Retry-After: 1
    clock[0] += 0.1
    assert retry_afters.left(mine) == pytest.approx(0.9)  # asked again at once: held for the rest
    assert retry_afters.left(other) == 0.0  # another connection was told nothing
    clock[0] += 0.9
    assert retry_afters.left(mine) == 0.0  # a client that waits it out is never held


def test_the_proxy_holds_an_early_request_then_judges_it_afresh(proxied, monkeypatch: pytest.MonkeyPatch):
    import serve.proxy_guard as proxy_guard

    held: list[float] = []

    async def hold(seconds: float) -> None:  # no real wait: the bucket has not refilled when it is judged
        held.append(seconds)

    monkeypatch.setattr(proxy_guard, "hold", hold)
    client, token, reached = proxied
    auth = {"Authorization": f"Bearer {token}"}
    answers = [client.post("/api/orch/submit", content=b"{}", headers=auth).status_code for _ in range(4)]
    assert answers == [200, 200, 429, 429] and len(reached) == 2
    assert len(held) == 1 and 0.5 < held[0] <= 1.0  # only the request after the first 429, for the rest of it
    assert client.get("/api/orch/status/x", headers=auth).status_code in (404, 405, 429) and len(held) == 2


def test_the_connections_remembered_are_bounded_and_run_out(monkeypatch: pytest.MonkeyPatch):
    import serve.proxy_guard as proxy_guard

    monkeypatch.setattr(proxy_guard, "MAX_HELD_CONNECTIONS", 3)
    clock = [0.0]
    retry_afters = RetryAfters(clock=lambda: clock[0])
    for port in range(5):  # five connections told at once: the two told first are forgotten
        retry_afters.told(("h", port), 10.0)
    assert [retry_afters.left(("h", port)) for port in range(5)] == [0.0, 0.0, 10.0, 10.0, 10.0]
    clock[0] = 11.0  # theirs has run out: the next one told finds them gone
    retry_afters.told(("h", 9), 1.0)
    assert retry_afters._until == {("h", 9): 12.0}
