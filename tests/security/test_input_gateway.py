"""Input that cannot hurt, through a real gateway (as `fabric up` starts it) on loopback with two team tokens:
every bad input of issue 15 gets a 4xx (or 429) problem+json naming the field, nothing of it is stored, and
the gateway and the registry stay up. Each test checks that invariant on the whole submission list."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from serve.auth import mint_token
from tests.conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

GOOD = {"version": 1, "pipeline_id": "legit", "nodes": [
    {"id": "a", "kind": "python_task", "entrypoint": "tests.nodes:sleeper", "params": {"seconds": 0}}]}


@pytest.fixture(scope="module")
def gateway(client, tmp_path_factory):
    from ray import serve

    from fabric.cli.gateway import start_gateway

    tokens_file = tmp_path_factory.mktemp("gateway") / "tokens.yaml"
    tokens = {team: mint_token(tokens_file, team) for team in ("research", "trading", "flood")}
    tokens["admin"] = mint_token(tokens_file, "ops", admin=True)
    url = start_gateway(tokens_file, free_port())
    with httpx.Client(base_url=url, timeout=60) as http:
        who = {team: {"Authorization": f"Bearer {token}"} for team, token in tokens.items()}
        # What the legitimate team submitted: the store must hold exactly this after every attack.
        legit = http.post("/api/orch/submit", headers=who["research"], json={"dag_spec": GOOD})
        assert legit.status_code == 202, legit.text
        yield http, who
    serve.shutdown()


def stored(http: httpx.Client, who: dict) -> list[str]:
    """Every submission of every team (the admin token sees them all)."""
    body = http.get("/api/orch/submissions", params={"limit": 1000}, headers=who["admin"]).json()
    return sorted(item["submission_id"] for item in body["items"])


@pytest.fixture
def unchanged(gateway) -> Iterator[None]:
    """The invariant around each attack: the same submissions before and after, and everything still up."""
    http, who = gateway
    before = stored(http, who)
    assert len(before) >= 1
    yield
    assert http.get("/healthz").json() == {"registry": "ok"}
    assert stored(http, who) == before
    assert http.get("/api/orch/submissions", headers=who["research"]).status_code == 200


def refused(response: httpx.Response, status: int, where: str, exact: bool = True) -> dict:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    named = [body["where"], *(p["where"] for p in body["problems"])]
    assert (where in named) if exact else any(w.startswith(where) for w in named), body
    return body


def test_no_token_and_an_empty_body_is_401_not_422(gateway, unchanged):
    http, _ = gateway
    for body in ({}, {"dag_spec": GOOD}):
        response = http.post("/api/orch/submit", json=body)
        refused(response, 401, "Authorization")
        assert response.headers["www-authenticate"].startswith("Bearer")
    refused(http.post("/api/orch/submit", json={}, headers={"Authorization": "Bearer not-a-token"}),
            401, "Authorization")


def test_a_chunked_body_over_the_limit_is_413(gateway, unchanged):
    http, who = gateway

    def four_mib() -> Iterator[bytes]:
        yield b'{"dag_spec": {"version": 1, "pipeline_id": "big", "description": "'
        for _ in range(64):
            yield b"x" * 65536
        yield b'", "nodes": []}}'

    try:
        response = http.post("/api/orch/submit", content=four_mib(), headers={
            **who["research"], "content-type": "application/json"})
    except httpx.TransportError:  # pragma: no cover - the server may close while the client still sends
        pytest.fail("the gateway dropped the connection instead of answering 413")
    assert "content-length" not in response.request.headers  # it was sent chunked
    refused(response, 413, "body")


def test_a_declared_length_over_the_limit_is_413(gateway, unchanged):
    http, who = gateway
    body = json.dumps({"dag_spec": {**GOOD, "description": "x" * (2 << 20)}})
    refused(http.post("/api/orch/submit", content=body, headers={**who["research"],
                                                                 "content-type": "application/json"}), 413, "body")


def test_a_yaml_alias_bomb_is_422_naming_dag_spec(gateway, unchanged):
    http, who = gateway
    lines = ["version: 1", "pipeline_id: bomb", f"a0: &a0 \"{'x' * 900}\""]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 6)]
    text = "\n".join(lines) + "\nnodes: [{id: n, kind: python_task, entrypoint: 'm:f', params: {p: *a5}}]\n"
    assert len(text) < 1500  # 53 MB once its aliases are expanded
    body = refused(http.post("/api/orch/submit", json={"dag_spec": text}, headers=who["research"]),
                   422, "dag_spec", exact=False)
    assert "through aliases" in json.dumps(body)


def test_params_nested_300_deep_are_422_naming_the_path(gateway, unchanged):
    http, who = gateway
    params: dict = {}
    inner = params
    for _ in range(300):
        inner["a"] = {}
        inner = inner["a"]
    spec = {**GOOD, "nodes": [{**GOOD["nodes"][0], "params": params}]}
    refused(http.post("/api/orch/submit", json={"dag_spec": spec}, headers=who["research"]),
            422, "dag_spec.nodes[0].params.a.a.a", exact=False)


def test_a_body_nested_past_the_json_parser_is_400_naming_the_body(gateway, unchanged):
    http, who = gateway
    text = '{"dag_spec": ' + "[" * 100_000 + "]" * 100_000 + "}"
    refused(http.post("/api/orch/submit", content=text, headers={**who["research"],
                                                                 "content-type": "application/json"}), 400, "body")


def test_a_thousand_label_filters_are_422_naming_label(gateway, unchanged):
    http, who = gateway
    query = "&".join(f"label=k{i}:v" for i in range(1000))
    refused(http.get(f"/api/orch/submissions?{query}", headers=who["research"]), 422, "label")
    query = "&".join(f"label=k{i}:v" for i in range(20))  # under the query bound, over the label bound
    refused(http.get(f"/api/orch/submissions?{query}", headers=who["research"]), 422, "label")


def test_a_dag_spec_path_is_never_opened_on_the_gateway_host(gateway, unchanged, tmp_path):
    http, who = gateway
    on_host = tmp_path / "spec.yaml"  # a valid spec on the gateway's own disk: it must not be read
    on_host.write_text(json.dumps({**GOOD, "pipeline_id": "from_the_host"}))
    for path in (str(on_host), f"{on_host}\n", str(tmp_path / "spec.json")):
        refused(http.post("/api/orch/submit", json={"dag_spec": path}, headers=who["research"]), 422, "dag_spec")
    refused(http.post("/api/orch/pipelines", json={"dag_spec": str(on_host)}, headers=who["research"]),
            422, "dag_spec")


def test_1500_nodes_with_a_problem_each_are_answered_at_once_with_100_listed(gateway, unchanged):
    http, who = gateway
    nodes = [{"id": f"node_{i}", "kind": "python_task", "entrypoint": "tests.nodes:sleeper"} for i in range(1500)]
    edges = [{"from": f"nod_{i}x", "to": f"node_{i}"} for i in range(1500)]  # every edge dangles
    started = time.monotonic()
    response = http.post("/api/orch/submit", json={"dag_spec": {**GOOD, "nodes": nodes, "edges": edges}},
                         headers=who["research"])
    elapsed = time.monotonic() - started
    body = refused(response, 422, "edges[0].from")
    assert len(body["problems"]) == 100 and "1500 problems" in body["title"]
    assert len(response.content) < 100_000 and elapsed < 15, (len(response.content), elapsed)  # was 75 s, 33 MB


def test_a_team_over_its_rate_gets_429_with_retry_after_and_others_go_on(gateway, unchanged):
    http, who = gateway
    statuses: list[int] = []
    for _ in range(600):  # `{}` bodies: nothing could be stored even before the bucket is empty
        response = http.post("/api/orch/submit", json={}, headers=who["flood"])
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {422}, sorted(set(statuses))
    body = refused(response, 429, "Authorization")
    assert body["code"] == "RATE_LIMITED" and "'flood'" in body["title"]
    assert int(response.headers["retry-after"]) >= 1
    assert http.get("/api/orch/submissions", headers=who["trading"]).status_code == 200  # its own bucket
