"""The gateway's front door (serve/guard.py) on a small FastAPI app, no Ray: the token before the body,
a team's token bucket, the query-parameter bound, and the body counted as it streams."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serve.auth import mint_token
from serve.guard import Guard, GuardState, Limits, TokenBuckets, Tokens


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate():
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst_s=2.0, clock=clock)  # 4 at once, then 2 per second
    assert [buckets.take("a") for _ in range(4)] == [0.0] * 4
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # another team's bucket is its own
    clock.now = 0.5
    assert buckets.take("a") == 0.0 and buckets.take("a") == pytest.approx(0.5)
    clock.now = 100.0
    assert [buckets.take("a") for _ in range(5)][-1] > 0  # refilled to the burst, never past it
    assert TokenBuckets(rate=0.0, burst_s=1.0).take("a") == 0.0  # 0: no limit


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], list[Any]]]:
    tokens = tmp_path / "tokens.yaml"
    token = mint_token(tokens, "research")
    seen: list[Any] = []
    api = FastAPI()

    @api.post("/api/orch/submit")
    async def submit(request: Request) -> dict[str, int]:
        body = await request.body()
        seen.append(body)
        return {"bytes": len(body)}

    @api.get("/api/orch/submissions")
    def submissions() -> dict[str, int]:
        return {"ok": 1}

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"ok": "yes"}

    state = GuardState()
    state.configure(Tokens(tokens), Limits(rate=100.0, write_rate=3.0, burst_s=1.0, max_body_bytes=1000,
                                           max_query_params=8))
    api.add_middleware(Guard, state=state)
    with TestClient(api) as client:
        yield client, {"Authorization": f"Bearer {token}"}, seen


def test_no_token_is_401_before_the_body_is_read(app):
    client, _, seen = app
    answer = client.post("/api/orch/submit", content=b"{}")
    assert answer.status_code == 401 and answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["where"] == "Authorization" and seen == []
    assert client.get("/healthz").status_code == 200  # outside /api: no token


def test_a_team_over_its_write_rate_gets_429_with_retry_after(app):
    client, auth, seen = app
    statuses = [client.post("/api/orch/submit", content=b"{}", headers=auth).status_code for _ in range(5)]
    assert statuses[:3] == [200] * 3 and statuses[3:] == [429, 429] and len(seen) == 3
    answer = client.post("/api/orch/submit", content=b"{}", headers=auth)
    assert answer.json()["code"] == "RATE_LIMITED" and int(answer.headers["retry-after"]) >= 1
    assert client.get("/api/orch/submissions", headers=auth).status_code == 200  # reads have their own rate


def test_a_chunked_body_is_counted_as_it_streams(app):
    client, auth, seen = app

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 100

    answer = client.post("/api/orch/submit", content=chunks(), headers=auth)
    assert answer.status_code == 413 and answer.json()["where"] == "body" and seen == []
    declared = client.post("/api/orch/submit", content=b"x" * 1001, headers=auth)
    assert declared.status_code == 413
    assert client.post("/api/orch/submit", content=b"x" * 1000, headers=auth).json() == {"bytes": 1000}


def test_too_many_query_parameters_name_the_parameter(app):
    client, auth, _ = app
    answer = client.get("/api/orch/submissions?" + "&".join(f"label=k{i}:v" for i in range(1000)), headers=auth)
    assert answer.status_code == 422 and answer.json()["where"] == "label"
    assert client.get("/api/orch/submissions?label=a:b&limit=5", headers=auth).status_code == 200


def test_a_team_at_its_writes_in_flight_gets_429_and_other_teams_and_reads_go_on(tmp_path):
    """A team's queued writes never hold the replica for others: its third concurrent POST is a 429 (Retry-After 1)
    while its first two wait; another team's POST and the team's own reads are answered; a slot frees on answer."""
    import asyncio

    import httpx

    tokens = tmp_path / "tokens.yaml"
    mine, theirs = mint_token(tokens, "flood"), mint_token(tokens, "victim")
    release = asyncio.Event()
    api = FastAPI()

    @api.post("/api/orch/submit")
    async def submit() -> dict[str, int]:
        await release.wait()
        return {"ok": 1}

    @api.get("/api/orch/submissions")
    async def submissions() -> dict[str, int]:
        return {"ok": 1}

    state = GuardState()
    state.configure(Tokens(tokens), Limits(rate=0.0, write_rate=0.0, team_writes=2))
    api.add_middleware(Guard, state=state)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://gw") as http:
            flood = {"Authorization": f"Bearer {mine}"}
            held = [asyncio.create_task(http.post("/api/orch/submit", headers=flood)) for _ in range(2)]
            await asyncio.sleep(0.05)
            third = await http.post("/api/orch/submit", headers=flood)
            assert third.status_code == 429 and third.headers["retry-after"] == "1"
            assert third.json()["code"] == "RATE_LIMITED" and "2 writes in flight" in third.json()["title"]
            assert (await http.get("/api/orch/submissions", headers=flood)).status_code == 200
            other = asyncio.create_task(http.post("/api/orch/submit", headers={"Authorization": f"Bearer {theirs}"}))
            await asyncio.sleep(0.05)
            release.set()
            assert [r.status_code for r in await asyncio.gather(*held, other)] == [200, 200, 200]
            assert (await http.post("/api/orch/submit", headers=flood)).status_code == 200  # slots given back

    asyncio.run(scenario())
    assert state.in_flight.counts() == {}
