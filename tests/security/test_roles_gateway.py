"""Roles and served names against a real Serve gateway on loopback, with runner and developer tokens for teams
a and b (and an admin): what a runner is refused (403 problem+json naming the field, the rule and the role, and
nothing stored), what a developer may ship, and who may redeploy, promote and predict a served name."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serve.auth import mint_token
from tests.conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
TEAMS = {"a": {"packages": ["tests.nodes"], "pools": ["cpu"],
               "serve": {"max_cpus": 1.0, "max_replicas": 4}},
         "b": {"serve": {"max_cpus": 1.0}}}


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    from tests.ml_models import Scale, log_model

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    return {"tracking_uri": uri, "v1": log_model(uri, Scale(1.0), str(root / "artifacts"))}


@pytest.fixture(scope="module")
def gw(client, tmp_path_factory):
    from ray import serve

    from fabric.cli.gateway import start_gateway

    tokens_file = tmp_path_factory.mktemp("gateway") / "tokens.yaml"
    headers = {name: {"Authorization": f"Bearer {mint_token(tokens_file, team, role=role)}"}
               for name, team, role in [("runner_a", "a", "runner"), ("dev_a", "a", "developer"),
                                        ("runner_b", "b", "runner"), ("dev_b", "b", "developer"),
                                        ("admin", "ops", "admin")]}
    _write_teams(tokens_file, TEAMS)
    url = start_gateway(tokens_file, free_port())
    with httpx.Client(base_url=url, timeout=60) as http:
        yield http, headers, tokens_file
    serve.shutdown()


def _write_teams(tokens_file: Path, teams: dict[str, Any]) -> None:
    data = yaml.safe_load(tokens_file.read_text())
    data["teams"] = teams
    tokens_file.write_text(yaml.safe_dump(data, sort_keys=False))
    time.sleep(0.05)  # a new mtime, so the gateway reads the file again


def _dag(*nodes: dict[str, Any], edges: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"version": 1, "pipeline_id": "roles", "nodes": list(nodes), "edges": edges or []}


def _task(entrypoint: str, node_id: str = "t", **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "kind": "python_task", "entrypoint": entrypoint, "resources": {"cpu": "100m"}, **extra}


def _submit(http: httpx.Client, headers: dict[str, str], dag: dict[str, Any], **runtime: Any) -> httpx.Response:
    return http.post("/api/orch/submit", headers=headers, json={"dag_spec": dag, "runtime_params": runtime})


def _stored(http: httpx.Client, admin: dict[str, str]) -> list[str]:
    return sorted(item["submission_id"] for item in http.get("/api/orch/submissions", headers=admin,
                                                             params={"limit": 1000}).json()["items"])


def _wait(http: httpx.Client, headers: dict[str, str], submission_id: str, timeout: float = 150) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"/api/orch/status/{submission_id}", headers=headers).json()
        if status["state"] != "RUNNING":
            return status
        time.sleep(0.3)
    raise AssertionError(f"{submission_id} still running")


def _refused(response: httpx.Response, where: str, rule: str, role: str) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "POLICY_DENIED" and body["status"] == 403
    matching = [p for p in body["problems"] if p["where"] == where]
    assert matching, body
    assert f"rule {rule}" in matching[0]["message"] and f"role {role}" in matching[0]["message"], matching
    return body


@pytest.mark.parametrize("entrypoint", ["subprocess:run", "os:system", "runpy:run_path", "shutil:rmtree",
                                        "timeit:timeit"])
def test_a_runner_cannot_run_a_command_and_nothing_is_stored(gw, entrypoint):
    http, h, _ = gw
    before = _stored(http, h["admin"])
    key = f"cmd-{entrypoint.replace(':', '-')}"
    response = _submit(http, h["runner_a"], _dag(_task(entrypoint, params={"args": ["id"]})), submission_id=key)
    body = _refused(response, "nodes[0].entrypoint", "code.entrypoint", "runner")
    assert body["where"] == "nodes[0].entrypoint"
    assert _stored(http, h["admin"]) == before
    # The idempotency key was not taken: the team's developer may use it for its own work.
    again = _submit(http, h["dev_a"], _dag(_task("tests.nodes:value")), submission_id=key)
    assert again.status_code == 202 and again.json()["created"] is True


def test_a_runner_cannot_ship_code_or_leave_its_pools(gw):
    http, h, _ = gw
    before = _stored(http, h["admin"])
    ok = _task("tests.nodes:value")
    _refused(_submit(http, h["runner_a"], _dag(ok), runtime_env={"working_dir": str(REPO)}),
             "runtime_params.runtime_env.working_dir", "code.runtime_env", "runner")
    _refused(_submit(http, h["runner_a"], _dag(_task("tests.nodes:value", env={"PYTHONPATH": "/tmp/evil"}))),
             "nodes[0].env.PYTHONPATH", "code.env", "runner")
    _refused(_submit(http, h["runner_a"], _dag(_task("tests.nodes:value", pool="gpu"))),
             "nodes[0].pool", "placement.pool", "runner")
    _refused(_submit(http, h["runner_a"], _dag(_task("tests.nodes:value", image="evil/image:1"))),
             "nodes[0].image", "code.image", "runner")
    sql = {"id": "q", "kind": "sql", "params": {"query": "SELECT * FROM read_csv('/etc/passwd')"}}
    _refused(_submit(http, h["runner_a"], _dag(sql)), "nodes[0].params.query", "sql.files", "runner")
    # Team a's config lets its runners call tests.nodes; team b's does not.
    _refused(_submit(http, h["runner_b"], _dag(ok)), "nodes[0].entrypoint", "code.entrypoint", "runner")
    assert _stored(http, h["admin"]) == before


@pytest.mark.parametrize("who,role", [("runner_a", "runner"), ("dev_b", "developer"), ("admin", "admin")])
def test_no_role_places_work_on_the_head(gw, who, role):
    http, h, _ = gw
    before = _stored(http, h["admin"])
    head = _task("tests.nodes:value", resources={"cpu": "100m", "custom": {"node:__internal_head__": 0.001}})
    _refused(_submit(http, h[who], _dag(head)), "nodes[0].resources.custom.node:__internal_head__",
             "placement.head", role)
    if who != "admin":
        pinned = _task("tests.nodes:value", resources={"cpu": "100m", "custom": {"node:127.0.0.1": 0.001}})
        _refused(_submit(http, h[who], _dag(pinned)), "nodes[0].resources.custom.node:127.0.0.1",
                 "placement.node", role)
    assert _stored(http, h["admin"]) == before


def test_a_runner_runs_registered_code_and_a_developer_its_own(gw):
    http, h, _ = gw
    response = _submit(http, h["runner_a"], _dag(_task("tests.nodes:value", params={"x": 2.0}, outs=["v"])))
    assert response.status_code == 202, response.text
    assert _wait(http, h["runner_a"], response.json()["submission_id"])["state"] == "SUCCEEDED"
    # A developer of team b ships code outside its team's packages (here: a runtime_env working_dir too).
    response = _submit(http, h["dev_b"], _dag(_task("tests.nodes:add", params={"a": 1, "b": 2}, outs=["s"])),
                       runtime_env={"env_vars": {"PYTHONDONTWRITEBYTECODE": "1"}})
    assert response.status_code == 202, response.text
    assert _wait(http, h["dev_b"], response.json()["submission_id"])["state"] == "SUCCEEDED"


def test_a_runner_cannot_register_or_start_by_name_what_it_could_not_submit(gw):
    http, h, _ = gw
    before = _stored(http, h["admin"])
    # Team b's developer registers a pipeline of its own code, and one whose query is a parameter.
    dev_code = {**_dag(_task("tests.nodes:value", outs=["v"])), "pipeline_id": "devcode"}
    assert http.post("/api/orch/pipelines", headers=h["dev_b"], json={"dag_spec": dev_code}).status_code == 201
    query = {"version": 1, "pipeline_id": "query", "params": {"q": {"type": "string", "default": "SELECT 1 AS x"}},
             "nodes": [_task("jobs.quant.data:generate_market_data", "data", outs=["prices"]),
                       {"id": "q", "kind": "sql", "ins": ["prices"], "params": {"query": "{{ params.q }}"},
                        "resources": {"cpu": "100m"}}]}
    assert http.post("/api/orch/pipelines", headers=h["dev_b"], json={"dag_spec": query}).status_code == 201
    # Its runner may not start the developer's code by name, nor a file-reading query through a parameter.
    _refused(http.post("/api/orch/pipelines/devcode/runs", headers=h["runner_b"], json={}),
             "nodes[0].entrypoint", "code.entrypoint", "runner")
    _refused(http.post("/api/orch/pipelines/query/runs", headers=h["runner_b"],
                       json={"params": {"q": "SELECT * FROM read_csv('/etc/passwd')"}}),
             "nodes[1].params.query", "sql.files", "runner")
    # Nor register a pipeline that it could not submit.
    bad = {**_dag(_task("os:system")), "pipeline_id": "cmd"}
    _refused(http.post("/api/orch/pipelines", headers=h["runner_b"], json={"dag_spec": bad}),
             "nodes[0].entrypoint", "code.entrypoint", "runner")
    assert http.get("/api/orch/pipelines/cmd/versions", headers=h["dev_b"]).status_code == 404
    assert _stored(http, h["admin"]) == before


def test_the_ray_client_applies_the_policy_when_given_a_role(client):
    from fabric.errors import ErrorCode, FabricError

    runner = client.for_team("a", role="runner")
    with pytest.raises(FabricError) as refused:
        runner.submit(_dag(_task("os:system", params={"command": "id"})))
    assert refused.value.code is ErrorCode.POLICY_DENIED and refused.value.where == "nodes[0].entrypoint"


def _model_dag(store: dict[str, str], name: str, **params: Any) -> dict[str, Any]:
    model = _task("tests.ml_models:model_uri", "model", params={"uri": store["v1"]}, outs=["model_uri"])
    serve_node = {"id": "serve", "kind": "serve", "ins": ["model_uri"], "outs": ["endpoint"],
                  "resources": {"cpu": "100m"},
                  "params": {"name": name, "tracking_uri": store["tracking_uri"], **params}}
    return _dag(model, serve_node, edges=[{"from": "model", "to": "serve"}])


def _predict(http: httpx.Client, headers: dict[str, str], name: str) -> httpx.Response:
    return http.post(f"/api/predict/{name}", headers=headers, json={"instances": [{"a": 1.0, "b": 2.0}]})


def test_a_served_name_belongs_to_its_first_team(gw, mlflow_store):
    http, h, tokens_file = gw
    response = _submit(http, h["dev_a"], _model_dag(mlflow_store, "owned"))
    assert response.status_code == 202, response.text
    assert _wait(http, h["dev_a"], response.json()["submission_id"])["state"] == "SUCCEEDED"
    assert _predict(http, h["dev_a"], "owned").json()["predictions"] == [3.0]
    assert _predict(http, h["runner_a"], "owned").status_code == 200
    assert _predict(http, h["admin"], "owned").status_code == 200

    # Team b may not replace it, promote it or call it.
    before = _stored(http, h["admin"])
    _refused(_submit(http, h["dev_b"], _model_dag(mlflow_store, "owned")), "nodes[1].params.name",
             "serve.owner", "developer")
    promote = _model_dag(mlflow_store, "owned")
    promote["nodes"][1] = {**promote["nodes"][1], "kind": "promote", "ins": ["model_uri", "metrics"]}
    promote["nodes"][0]["outs"] = ["model_uri", "metrics"]
    _refused(_submit(http, h["dev_b"], promote), "nodes[1].params.name", "serve.owner", "developer")
    assert _stored(http, h["admin"]) == before
    refused = _predict(http, h["dev_b"], "owned")
    assert refused.status_code == 403 and refused.json()["where"] == "name", refused.text
    assert _predict(http, h["runner_b"], "owned").status_code == 403

    # Published to team b in the config, b may call it (but still not redeploy it).
    _write_teams(tokens_file, {**TEAMS, "a": {**TEAMS["a"], "serve": {**TEAMS["a"]["serve"],
                                                                         "publish": {"owned": ["b"]}}}})
    try:
        assert _predict(http, h["dev_b"], "owned").status_code == 200
        _refused(_submit(http, h["dev_b"], _model_dag(mlflow_store, "owned")), "nodes[1].params.name",
                 "serve.owner", "developer")
    finally:
        _write_teams(tokens_file, TEAMS)


def test_tenant_code_cannot_take_a_served_name_over(gw, client, mlflow_store):
    """Who owns a name is the registry's record: a developer's node that writes the GCS key where claims were once
    kept, or calls the registry's claim methods itself, still cannot redeploy, promote or call another team's name."""
    http, h, _ = gw
    if _predict(http, h["dev_a"], "owned").status_code != 200:  # owned by a (the test above), or made so here
        made = _submit(http, h["dev_a"], _model_dag(mlflow_store, "owned"))
        assert _wait(http, h["dev_a"], made.json()["submission_id"])["state"] == "SUCCEEDED"
    attack = _submit(http, h["dev_b"], _dag(_task("tests.security.attacks:forge_served_claim", "forge",
                                                  params={"name": "owned", "team": "b"})))
    assert attack.status_code == 202, attack.text
    sid = attack.json()["submission_id"]
    assert _wait(http, h["dev_b"], sid)["state"] == "SUCCEEDED"
    seen = client.get(sid).result("forge")
    assert seen["kv_put"].startswith("ok"), seen  # Ray lets any task write GCS keys: fabric no longer reads them
    assert {seen[k] for k in ("claim", "release", "read")} == {"refused: FORBIDDEN"}, seen
    before = _stored(http, h["admin"])
    _refused(_submit(http, h["dev_b"], _model_dag(mlflow_store, "owned")), "nodes[1].params.name",
             "serve.owner", "developer")
    assert _stored(http, h["admin"]) == before
    assert _predict(http, h["dev_b"], "owned").status_code == 403
    assert _predict(http, h["dev_a"], "owned").status_code == 200
    assert client.served_names(["owned"])["owned"].owner == "a"


def test_a_developer_node_cannot_call_into_the_gateway_replicas(gw, client, tmp_path):
    """The gateway's replicas hold the control key: Ray's `__ray_call__` on them is refused (sealed at the process's
    start, fabric/execute/sealed.py), so a developer's node cannot run a function there that way. (A crafted pickle
    sent as an argument of Serve's own replica methods is still opened there: `payload_arg_0` and the markers are
    printed, not asserted; docs/security.md says so.)"""
    http, h, _ = gw
    attack = _submit(http, h["dev_b"], _dag(_task("tests.security.attacks:hit_gateway", "hit",
                                                  params={"marker_dir": str(tmp_path)})))
    assert attack.status_code == 202, attack.text
    status = _wait(http, h["dev_b"], attack.json()["submission_id"])
    assert status["state"] == "SUCCEEDED", (status, client.get(attack.json()["submission_id"]).logs("hit")[-3000:])
    seen = client.get(attack.json()["submission_id"]).result("hit")
    print("gateway attack:", seen, "markers:", sorted(p.name for p in tmp_path.iterdir()))
    assert seen["found"] == "ok: 1", seen
    assert seen["ray_call_builtin_0"] == "refused: PermissionError", seen
    assert seen["ray_call_fn_0"] == "refused: PermissionError", seen
    assert http.get("/api/orch/submissions", headers=h["dev_a"]).status_code == 200  # the gateway is still up


def test_serve_capacity_is_bounded_per_team(gw, mlflow_store):
    http, h, _ = gw
    before = _stored(http, h["admin"])
    body = _refused(_submit(http, h["dev_b"], _model_dag(mlflow_store, "big", num_replicas=3, replica_cpus=0.5)),
                    "nodes[1].params.replica_cpus", "serve.capacity", "developer")
    assert "max_cpus 1" in body["problems"][0]["message"]
    _refused(_submit(http, h["dev_a"], _model_dag(mlflow_store, "wide", num_replicas=5, replica_cpus=0.01)),
             "nodes[1].params.num_replicas", "serve.capacity", "developer")
    assert _stored(http, h["admin"]) == before
