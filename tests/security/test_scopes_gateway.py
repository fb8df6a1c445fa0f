"""Attacks on scopes and names that belong to teams, through a real gateway on loopback with two team tokens:
team trading cannot read research's secrets, reuse or poison its cache entries, learn or squat its submission
ids, or out-prioritise it. After each refused attack nothing of it is stored."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest

from serve.auth import mint_token
from tests.conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

RESEARCH_SECRET = "research-" + hashlib.sha256(b"fabric scopes canary").hexdigest()[:24]
TRADING_SECRET = "trading-" + hashlib.sha256(b"fabric scopes other canary").hexdigest()[:24]
GRANTS = """
grants:
  research: {secrets_scopes: [research-lake], max_priority: high, shared_cache: true}
  trading: {secrets_scopes: [trading-keys], max_priority: normal}
  ops: {shared_cache: true}
"""


@pytest.fixture(scope="module")
def fabric_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("fabric-home")
    for scope, value in (("research-lake", RESEARCH_SECRET), ("trading-keys", TRADING_SECRET)):
        (home / "secrets" / scope).mkdir(parents=True)
        (home / "secrets" / scope / "token").write_text(value)  # on the head, where the registry reads them
    return home


@pytest.fixture(scope="module")
def gateway(client, tmp_path_factory):
    from ray import serve

    from fabric.cli.gateway import start_gateway

    tokens_file = tmp_path_factory.mktemp("gateway") / "tokens.yaml"
    tokens = {"research": mint_token(tokens_file, "research"), "trading": mint_token(tokens_file, "trading"),
              "admin": mint_token(tokens_file, "ops", admin=True)}
    with tokens_file.open("a") as file:
        file.write(GRANTS)
    url = start_gateway(tokens_file, free_port())
    with httpx.Client(base_url=url, timeout=60) as http:
        yield http, {team: {"Authorization": f"Bearer {token}"} for team, token in tokens.items()}
    serve.shutdown()


def submit(http, who, spec: dict, params: dict | None = None) -> httpx.Response:
    return http.post("/api/orch/submit", headers=who, json={"dag_spec": spec, "runtime_params": params or {}})


def finished(http, who, submission_id: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"/api/orch/status/{submission_id}", headers=who).json()
        if body["state"] != "RUNNING":
            return body
        time.sleep(0.2)
    raise AssertionError(f"{submission_id} still RUNNING")


def nothing_stored(http, admin, label: str) -> None:
    """The store holds nothing of a refused attack (the admin sees every team's submissions)."""
    items = http.get("/api/orch/submissions", params={"label": f"attack:{label}"}, headers=admin).json()["items"]
    assert items == [], items


def forbidden(response: httpx.Response, where: str, team: str) -> dict:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "FORBIDDEN" and body["where"] == where and f"team {team!r}" in body["title"], body
    return body


def secret_dag(scope: str) -> dict:
    return {"version": 1, "pipeline_id": "reader", "nodes": [
        {"id": "read", "kind": "python_task", "entrypoint": "tests.security.scope_nodes:secret_digest",
         "params": {"scope": scope, "key": "token"}, "slo": {"retry": {"max_attempts": 1}}}]}


def test_a_team_cannot_read_another_teams_secrets(gateway, fabric_home):
    http, who = gateway
    stolen = submit(http, who["trading"], secret_dag("research-lake"),
                    {"secrets_scope": ["research-lake"], "labels": {"attack": "secret"}})
    body = forbidden(stolen, "runtime_params.secrets_scope", "trading")
    assert "research-lake" in body["title"] and "trading-keys" in body["title"]  # the rule: what it is granted
    nothing_stored(http, who["admin"], "secret")
    # Its own scope listed, the other team's read from inside the node: refused there too.
    sneaky = submit(http, who["trading"], secret_dag("research-lake"), {"secrets_scope": ["trading-keys"]})
    failed = finished(http, who["trading"], sneaky.json()["submission_id"])
    assert failed["state"] == "FAILED" and "not listed" in failed["nodes"][0]["error"]["message"]
    # The granted team reads its own: the head delivered the scope through Ray, for that attempt.
    own = submit(http, who["research"], secret_dag("research-lake"), {"secrets_scope": ["research-lake"]})
    sid = own.json()["submission_id"]
    assert finished(http, who["research"], sid)["state"] == "SUCCEEDED"
    seen = json.loads(http.get(f"/api/orch/artifacts/{sid}/read/secret.json", headers=who["research"]).content)
    assert seen == {"sha256": hashlib.sha256(RESEARCH_SECRET.encode()).hexdigest(), "delivered": ["research-lake"]}
    # The value is nowhere in what fabric wrote: the store, the logs, the node dirs, the artifacts.
    leaks = [str(p) for p in Path(fabric_home).rglob("*") if p.is_file() and "secrets" not in p.parts
             and RESEARCH_SECRET.encode() in p.read_bytes()]
    assert leaks == []


def cache_dag(shared: bool = False, seconds: float = 0.0) -> dict:
    return {"version": 1, "pipeline_id": "cached", "nodes": [
        {"id": "work", "kind": "python_task", "entrypoint": "tests.security.scope_nodes:made_by",
         "params": {"x": 7, "seconds": seconds}, "cache": "shared" if shared else True}]}


def test_a_team_neither_reuses_nor_waits_for_nor_poisons_another_teams_cache(gateway):
    http, who = gateway
    theirs = submit(http, who["research"], cache_dag(seconds=2.0)).json()["submission_id"]
    mine = submit(http, who["trading"], cache_dag(seconds=2.0)).json()["submission_id"]  # identical, meanwhile
    time.sleep(0.8)
    status = http.get(f"/api/orch/status/{mine}", headers=who["trading"]).json()
    assert "waits for the identical node" not in (status["nodes"][0]["reason"] or "")  # no coalescing across
    for team, sid in (("research", theirs), ("trading", mine)):
        done = finished(http, who[team], sid)
        assert done["nodes"][0]["state"] == "SUCCEEDED", done  # each ran its own
        made = http.get(f"/api/orch/artifacts/{sid}/work/made_by.txt", headers=who[team]).text
        assert made == sid  # its own files, never the other team's copied in
    # Within a team the cache still works, and it reuses that team's own entry (trading's, not research's).
    again = submit(http, who["trading"], cache_dag(seconds=2.0)).json()["submission_id"]
    reused = finished(http, who["trading"], again)["nodes"][0]
    assert reused["state"] == "CACHED" and mine in reused["reason"] and theirs not in reused["reason"]
    # A CACHED node's files are copied from the node it reuses by a task of their own, just after it ends.
    deadline = time.monotonic() + 20
    while (copied := http.get(f"/api/orch/artifacts/{again}/work/made_by.txt", headers=who["trading"])).status_code \
            == 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert copied.text == mine
    # The shared cache is a grant: trading has none; research and ops both opted in, and share.
    refused = submit(http, who["trading"], cache_dag(shared=True), {"labels": {"attack": "shared-cache"}})
    forbidden(refused, "nodes[0].cache", "trading")
    nothing_stored(http, who["admin"], "shared-cache")
    first = submit(http, who["research"], cache_dag(shared=True)).json()["submission_id"]
    assert finished(http, who["research"], first)["nodes"][0]["state"] == "SUCCEEDED"
    second = submit(http, who["admin"], cache_dag(shared=True)).json()["submission_id"]
    assert first in finished(http, who["admin"], second)["nodes"][0]["reason"]


def test_a_team_cannot_learn_or_squat_another_teams_submission_ids(gateway):
    http, who = gateway
    short = cache_dag()
    short["nodes"][0]["cache"] = False
    theirs = submit(http, who["research"], short, {"submission_id": "run-2026-12-03"})
    assert theirs.status_code == 202 and theirs.json() == {"submission_id": "research:run-2026-12-03", "created": True}
    # The same key from another team, with another DAG: no 409, nothing learned: its own submission.
    other = {**short, "pipeline_id": "other"}
    mine = submit(http, who["trading"], other, {"submission_id": "run-2026-12-03"})
    assert mine.status_code == 202 and mine.json() == {"submission_id": "trading:run-2026-12-03", "created": True}
    assert http.get("/api/orch/status/run-2026-12-03", headers=who["trading"]).json()["pipeline_id"] == "other"
    for probe in ("research:run-2026-12-03", theirs.json()["submission_id"]):
        for route in ("status", "logs", "artifacts", "graph", "lineage"):
            params = {"node": "work"} if route == "logs" else None
            answer = http.get(f"/api/orch/{route}/{probe}", params=params, headers=who["trading"])
            assert answer.status_code == 404, (route, answer.text)
        assert http.post(f"/api/orch/cancel/{probe}", headers=who["trading"]).status_code == 404
    listed = http.get("/api/orch/submissions", params={"search": "run-2026"}, headers=who["trading"]).json()
    assert [i["submission_id"] for i in listed["items"]] == ["trading:run-2026-12-03"]
    # Squatting the next key first takes nothing from research: it still gets its own.
    assert submit(http, who["trading"], other, {"submission_id": "run-2026-12-04"}).status_code == 202
    later = submit(http, who["research"], short, {"submission_id": "run-2026-12-04"})
    assert later.json() == {"submission_id": "research:run-2026-12-04", "created": True}
    # And research's own idempotency holds: the same request again is the same submission.
    again = submit(http, who["research"], short, {"submission_id": "run-2026-12-03"})
    assert again.json() == {"submission_id": "research:run-2026-12-03", "created": False}
    assert finished(http, who["research"], "run-2026-12-03")["pipeline_id"] == "cached"


def test_a_team_cannot_out_prioritise_another(gateway):
    http, who = gateway
    dag = cache_dag()
    dag["nodes"][0]["cache"] = False
    forbidden(submit(http, who["trading"], dag, {"priority": "critical", "labels": {"attack": "priority"}}),
              "runtime_params.priority", "trading")
    forbidden(submit(http, who["trading"], {**dag, "slo": {"priority": "high"}}, {"labels": {"attack": "priority"}}),
              "slo.priority", "trading")
    node_claim = json.loads(json.dumps(dag))
    node_claim["nodes"][0]["slo"] = {"priority": "critical"}
    body = forbidden(submit(http, who["research"], node_claim, {"labels": {"attack": "priority"}}),
                     "nodes[0].slo.priority", "research")
    assert "max_priority is 'high'" in body["title"]
    # A pipeline registered by name is no way around it: a version claiming more is refused when registered,
    # and the runs of one registered within the grant are checked as any submit.
    urgent = {**dag, "pipeline_id": "urgent", "slo": {"priority": "critical"}}
    forbidden(http.post("/api/orch/pipelines", headers=who["trading"], json={"dag_spec": urgent}),
              "slo.priority", "trading")
    within = {**dag, "pipeline_id": "urgent"}
    assert http.post("/api/orch/pipelines", headers=who["trading"], json={"dag_spec": within}).status_code < 300
    forbidden(http.post("/api/orch/pipelines/urgent/runs", headers=who["trading"],
                        json={"runtime_params": {"priority": "critical", "labels": {"attack": "priority"}}}),
              "runtime_params.priority", "trading")
    forbidden(http.post("/api/orch/pipelines/urgent/runs", headers=who["trading"], json={"runtime_params": {
        "priority": "critical", "secrets_scope": ["research-lake"], "labels": {"attack": "priority"}}}),
        "runtime_params.secrets_scope", "trading")
    nothing_stored(http, who["admin"], "priority")
    granted = submit(http, who["research"], dag, {"priority": "high"})
    assert granted.status_code == 202
    assert finished(http, who["research"], granted.json()["submission_id"])["state"] == "SUCCEEDED"
