"""The Serve gateway over HTTP on loopback: auth, problem+json errors, team isolation, the orch routes."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from serve.auth import TokenTable, hash_token, mint_token

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(client, tmp_path_factory):
    from ray import serve

    from fabric.cli.gateway import start_gateway

    tokens_file = tmp_path_factory.mktemp("gateway") / "tokens.yaml"
    research = mint_token(tokens_file, "research")
    trading = mint_token(tokens_file, "trading")
    admin = mint_token(tokens_file, "ops", admin=True)
    url = start_gateway(tokens_file, _free_port())
    with httpx.Client(base_url=url, timeout=30) as http:
        yield (http, {"Authorization": f"Bearer {research}"}, {"Authorization": f"Bearer {trading}"}, tokens_file,
               {"Authorization": f"Bearer {admin}"})
    serve.shutdown()


def quant_yaml() -> str:
    return (REPO / "jobs/dags/quant_backtest.yaml").read_text()


def wait_for_state(http, headers, submission_id, timeout=90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"/api/orch/status/{submission_id}", headers=headers).json()
        if body["state"] != "RUNNING":
            return body
        time.sleep(0.3)
    raise AssertionError(f"{submission_id} still RUNNING")


def test_tokens_are_stored_hashed(gateway):
    tokens_file = gateway[3]
    text = tokens_file.read_text()
    table = TokenTable.load(tokens_file)
    assert "sha256" in text and table.authenticate(f"Bearer {_token(gateway, 1)}").team == "research"
    assert _token(gateway, 1) not in text and hash_token(_token(gateway, 1)) in text
    assert oct(tokens_file.stat().st_mode & 0o777) == "0o600"


def _token(gateway, index: int) -> str:
    return gateway[index]["Authorization"].split()[1]


def test_health_metrics_and_openapi(gateway):
    http, *_ = gateway
    assert http.get("/healthz").json() == {"registry": "ok"}
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/api/orch/submit", "/api/orch/status/{submission_id}", "/api/orch/logs/{submission_id}",
            "/api/orch/cancel/{submission_id}", "/api/orch/submissions"} <= set(paths)
    assert "fabric_gateway_requests_total" in http.get("/metrics").text


def test_queues_and_quotas_routes_answer_with_admission_on_by_default(gateway):
    http, research, *_ = gateway
    queues = http.get("/api/orch/queues", headers=research).json()
    assert queues["admission"] is True and isinstance(queues["queue"], list)  # the shipped default config
    quotas = http.get("/api/orch/quotas", headers=research).json()
    assert quotas["admission"] is True and isinstance(quotas["quotas"], list)
    assert http.get("/api/orch/quotas").status_code == 401


def test_workers_shows_the_ray_nodes_busy_or_idle(gateway):
    http, research, *_ = gateway
    assert http.get("/api/orch/workers").status_code == 401
    [node] = http.get("/api/orch/workers", headers=research).json()["workers"]
    assert node["alive"] and node["resources"]["CPU"] == 2 and node["resources"]["GPU"] == 4
    assert node["state"] in ("busy", "idle") and 0 <= node["load"] <= 1


def test_every_api_route_needs_a_valid_token(gateway):
    http, *_ = gateway
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic x"}):
        response = http.get("/api/orch/submissions", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "UNAUTHORIZED"
        assert response.headers["www-authenticate"] == 'Bearer realm="fabric"'


def test_submit_the_example_over_http_to_success(gateway):
    http, research, *_ = gateway
    response = http.post("/api/orch/submit", headers=research,
                         json={"dag_spec": quant_yaml(), "runtime_params": {"labels": {"project": "xs"}}})
    assert response.status_code == 202, response.text
    submission_id = response.json()["submission_id"]
    assert response.headers["location"] == f"/api/orch/status/{submission_id}"
    assert http.get(response.headers["location"], headers=research).json()["submission_id"] == submission_id
    status = wait_for_state(http, research, submission_id)
    assert status["state"] == "SUCCEEDED" and {n["state"] for n in status["nodes"]} == {"SUCCEEDED"}
    logs = http.get(f"/api/orch/logs/{submission_id}", params={"node": "make_data", "tail": 5}, headers=research)
    assert logs.status_code == 200 and "attempt 1" in logs.json()["text"]
    listed = http.get("/api/orch/submissions", params={"label": "project:xs"}, headers=research).json()
    assert submission_id in [item["submission_id"] for item in listed["items"]]


def test_bad_input_is_a_4xx_naming_the_field_and_changes_nothing(gateway):
    http, research, *_ = gateway
    before = http.get("/api/orch/submissions", headers=research).json()["items"]
    bad_node = {"version": 1, "pipeline_id": "bad", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:f", "bogus": 1, "resources": {"cpu": "-2"}}]}
    response = http.post("/api/orch/submit", headers=research, json={"dag_spec": bad_node})
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    wheres = {p["where"] for p in response.json()["problems"]}
    assert {"nodes[0].bogus", "nodes[0].resources.cpu"} <= wheres
    cycle = ("version: 1\npipeline_id: c\nnodes: [{id: a, kind: sql, params: {query: 'select 1'}},"
             " {id: b, kind: sql, params: {query: 'select 1'}}]\nedges: [{from: a, to: b}, {from: b, to: a}]\n")
    response = http.post("/api/orch/submit", headers=research, json={"dag_spec": cycle})
    assert response.status_code == 422 and "a -> b -> a" in str(response.json()["problems"]) or \
        "b -> a -> b" in str(response.json()["problems"])
    assert http.post("/api/orch/submit", headers=research, json={"nope": 1}).status_code == 422
    assert http.post("/api/orch/submit", headers=research, content=b"{not json").status_code == 422
    huge = {"dag_spec": {"version": 1, "pipeline_id": "x", "nodes": [], "pad": "x" * (1 << 21)}}
    response = http.post("/api/orch/submit", headers=research, json=huge)
    assert response.status_code == 413 and response.json()["code"] == "TOO_LARGE"
    assert http.get("/api/orch/status/sub-nope", headers=research).status_code == 404
    after = http.get("/api/orch/submissions", headers=research).json()["items"]
    assert after == before


def test_teams_see_and_cancel_only_their_own_work(gateway):
    http, research, trading, *_ = gateway
    slow = ("version: 1\npipeline_id: slow\nnodes: [{id: wait, kind: python_task, "
            "entrypoint: 'tests.nodes:sleeper', params: {seconds: 60}}]\n")
    submission_id = http.post("/api/orch/submit", headers=research, json={"dag_spec": slow}).json()["submission_id"]
    assert http.get(f"/api/orch/status/{submission_id}", headers=trading).status_code == 404
    assert http.post(f"/api/orch/cancel/{submission_id}", headers=trading).status_code == 404
    theirs = http.get("/api/orch/submissions", headers=trading).json()["items"]
    assert submission_id not in [item["submission_id"] for item in theirs]
    forged = http.post("/api/orch/submit", headers=trading,
                       json={"dag_spec": slow, "runtime_params": {"team": "research"}})
    assert forged.status_code == 403 and forged.json()["code"] == "FORBIDDEN"
    cancelled = http.post(f"/api/orch/cancel/{submission_id}", headers=research)
    assert cancelled.status_code == 202 and cancelled.headers["location"] == f"/api/orch/status/{submission_id}"
    assert wait_for_state(http, research, submission_id, timeout=30)["state"] == "CANCELLED"


def test_the_same_submission_id_is_the_same_submission(gateway):
    http, research, *_ = gateway
    body = {"dag_spec": quant_yaml(), "runtime_params": {"submission_id": "http-idem-1"}}
    first = http.post("/api/orch/submit", headers=research, json=body).json()
    again = http.post("/api/orch/submit", headers=research, json=body).json()
    # Keys are per team: the team's id is `research:<key>`, and the key alone still finds it for that team.
    assert first["submission_id"] == again["submission_id"] == "research:http-idem-1"
    assert first["created"] and not again["created"]
    wait_for_state(http, research, "http-idem-1")


def test_kill_switch_closes_admission_and_drain_waits_for_running_work(gateway):
    http, research, _, _, admin = gateway
    short = ("version: 1\npipeline_id: short\nnodes: [{id: wait, kind: python_task, "
             "entrypoint: 'tests.nodes:sleeper', params: {seconds: 3}}]\n")
    denied = http.post("/api/orch/admin/kill-switch", headers=research, json={"on": True})
    assert denied.status_code == 403
    running = http.post("/api/orch/submit", headers=research, json={"dag_spec": short}).json()["submission_id"]
    try:
        switched = http.post("/api/orch/admin/kill-switch", headers=admin,
                             json={"on": True, "reason": "maintenance", "actor": "alice"})
        assert switched.status_code == 200 and switched.json()["on"] is True
        assert http.get("/api/orch/admin/kill-switch", headers=admin).json() == {
            "on": True, "reason": "maintenance (by ops/alice)"}
        assert http.get("/api/orch/admin/kill-switch", headers=research).status_code == 403
        refused = http.post("/api/orch/submit", headers=research, json={"dag_spec": short})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["code"] == "ADMISSION_CLOSED" and "maintenance" in refused.json()["title"]
        report = http.post("/api/orch/admin/drain", headers=admin, json={"timeout_s": 60}).json()
        assert running in report["finished"] and report["still_running"] == [] and report["admission"] == "closed"
        assert wait_for_state(http, research, running)["state"] == "SUCCEEDED"  # running work went on
    finally:
        assert http.post("/api/orch/admin/kill-switch", headers=admin, json={"on": False}).json()["on"] is False
    assert http.post("/api/orch/submit", headers=research, json={"dag_spec": short}).status_code == 202


def test_an_unwritable_store_answers_503_and_acknowledges_nothing(gateway, fabric_home):
    import sqlite3

    http, research, *_ = gateway
    before = http.get("/api/orch/submissions", headers=research).json()["items"]
    db = sqlite3.connect(fabric_home / "fabric.db")  # the registry's own store, failing as a full disk would
    db.execute("CREATE TRIGGER full_disk BEFORE INSERT ON submissions BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    db.commit()
    try:
        body = {"dag_spec": quant_yaml(), "runtime_params": {"submission_id": "never-written"}}
        response = http.post("/api/orch/submit", headers=research, json=body)
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert response.json()["code"] == "STORE_UNAVAILABLE"
        assert http.get("/api/orch/status/never-written", headers=research).status_code == 404
    finally:
        db.execute("DROP TRIGGER full_disk")
        db.commit()
        db.close()
    assert http.get("/api/orch/submissions", headers=research).json()["items"] == before
    retried = http.post("/api/orch/submit", headers=research, json=body)  # the same key, now it lands once
    assert retried.status_code == 202 and retried.json()["created"]
    assert wait_for_state(http, research, "never-written")["state"] == "SUCCEEDED"
    from tests.reliability.results import record

    record("fault", "store unwritable (disk full / read-only)", answer="503 STORE_UNAVAILABLE with Retry-After",
           acknowledged_while_unwritable=0, outcome="nothing acknowledged; the retry with the same key landed once")


def test_connect_by_url_gives_the_same_api_over_http(gateway):
    import fabric as fb
    from fabric.errors import ErrorCode, FabricError, NotFoundError, SpecError

    http, research, trading, *_ = gateway
    remote = fb.connect(str(http.base_url), token=_token(gateway, 1))
    assert remote.ping()
    submission = remote.submit(quant_yaml(), {"labels": {"via": "sdk-http"}})
    status = submission.wait(120)
    assert status.state == "SUCCEEDED" and {n.state for n in status.nodes} == {"SUCCEEDED"}
    assert "--- attempt 1" in submission.logs("report")
    assert [i["submission_id"] for i in remote.list(labels={"via": "sdk-http"})] == [submission.id]
    again = remote.submit(quant_yaml(), {"labels": {"via": "sdk-http"}, "submission_id": submission.id})
    assert again.id == submission.id and not again.created
    with pytest.raises(FabricError, match="object store") as result_error:
        submission.result("report")
    assert result_error.value.fix
    with pytest.raises(SpecError) as bad:
        remote.submit({"version": 1, "pipeline_id": "x", "nodes": [{"id": "a", "kind": "python_tsk"}]})
    assert any("kind" in p.where for p in bad.value.problems)
    other = fb.connect(str(http.base_url), token=_token(gateway, 2))
    with pytest.raises(NotFoundError):
        other.get(submission.id)  # another team's work does not exist for it
    with pytest.raises(FabricError) as unauthorized:
        fb.connect(str(http.base_url), token="wrong").list()
    assert unauthorized.value.code is ErrorCode.UNAUTHORIZED
    # The rest of the protocol, over HTTP: the same answers as the routes give.
    assert submission.logs("report", tail=1) == submission.logs("report").splitlines()[-1]
    assert submission.artifacts() == remote.artifacts(submission.id) and "nodes" in remote.artifacts(submission.id)
    assert remote.artifact(submission.id, None, "metrics.json").startswith(b"{")
    assert submission.graph()["nodes"] and submission.lineage()
    assert remote.workers()[0]["alive"] and "admission" in remote.queues()
    assert "fabric_gateway_requests_total" in remote.metrics_text()
    admin = fb.connect(str(http.base_url), token=_token(gateway, 4))
    assert admin.kill_switch() == {"on": False, "reason": ""}
    remote.close()


def test_the_list_pages_with_an_opaque_cursor_searches_on_the_server_and_refuses_a_bad_cursor(gateway, client):
    import fabric as fb
    from fabric.errors import SpecError

    http, research, *_ = gateway
    short = ("version: 1\npipeline_id: paged-{n}\nnodes: [{{id: a, kind: python_task, "
             "entrypoint: 'tests.nodes:sleeper', params: {{seconds: 0}}}}]\n")
    ids = [http.post("/api/orch/submit", headers=research,
                     json={"dag_spec": short.format(n=n), "runtime_params": {"labels": {"paged": "yes"}}}
                     ).json()["submission_id"] for n in range(7)]
    seen, cursor = [], None
    for _ in range(10):
        params = {"label": "paged:yes", "limit": 3, **({"cursor": cursor} if cursor else {})}
        body = http.get("/api/orch/submissions", params=params, headers=research).json()
        seen += [item["submission_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and "." not in cursor  # opaque, not a timestamp
    assert seen == ids[::-1]
    found = http.get("/api/orch/submissions", params={"search": "paged-3"}, headers=research).json()["items"]
    assert [item["submission_id"] for item in found] == [ids[3]]
    bad = http.get("/api/orch/submissions", params={"cursor": "1764713045.5"}, headers=research)
    assert bad.status_code == 422 and bad.json()["where"] == "cursor"
    remote = fb.connect(str(http.base_url), token=_token(gateway, 1))
    first = remote.list(limit=4, labels={"paged": "yes"})
    rest = remote.list(limit=4, labels={"paged": "yes"}, cursor=first.next_cursor)
    assert [i["submission_id"] for i in first + rest] == ids[::-1] and rest.next_cursor is None
    ray_side = client.for_team("research")
    assert [i["submission_id"] for i in ray_side.list(limit=4, labels={"paged": "yes"}, cursor=first.next_cursor)] \
        == [i["submission_id"] for i in rest]
    with pytest.raises(SpecError):
        remote.list(cursor="nope")


def test_cli_talks_to_the_gateway_by_url(gateway, tmp_path):
    import os
    import subprocess
    import sys

    http, *_ = gateway
    env = {**os.environ, "FABRIC_ADDRESS": str(http.base_url), "FABRIC_TOKEN": _token(gateway, 1)}
    run = subprocess.run([sys.executable, "-m", "fabric.cli", "submit", "jobs/dags/quant_backtest.yaml", "--wait"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stderr
    submission_id = run.stdout.split()[0]
    shown = subprocess.run([sys.executable, "-m", "fabric.cli", "status", submission_id, "--json"],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and '"state": "SUCCEEDED"' in shown.stdout


def test_serve_config_file_and_import_paths_build_the_gateway():
    """`serve deploy serve/config.yaml`, `serve run serve.gateway:app` and `...:build_app` all resolve."""
    import yaml
    from ray.serve._private.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "serve/config.yaml").read_text()))
    [application] = config.applications
    built = import_attr(application.import_path)(application.args)
    assert type(built).__name__ == "Application"
    assert {d.name for d in application.deployments} == {built._bound_deployment.name}  # names one that exists
    assert type(import_attr("serve.gateway:app")).__name__ == "Application"


def test_metrics_at_the_gateway_and_through_rays_metrics_agent(gateway):
    import urllib.request

    import ray
    from prometheus_client.parser import text_string_to_metric_families

    http, research, *_ = gateway
    submission_id = http.post("/api/orch/submit", headers=research,
                              json={"dag_spec": quant_yaml()}).json()["submission_id"]
    assert wait_for_state(http, research, submission_id)["state"] == "SUCCEEDED"
    families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    finished = {(s.labels["kind"], s.labels["state"]): s.value for s in families["fabric_nodes_finished"].samples}
    assert finished[("python_task", "SUCCEEDED")] >= 5 and finished[("sql", "SUCCEEDED")] >= 1
    assert any(s.value >= 1 for s in families["fabric_submissions_finished"].samples
               if s.labels == {"team": "research", "state": "SUCCEEDED"})
    assert [s.value for s in families["fabric_registry_up"].samples] == [1.0]

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    deadline = time.monotonic() + 40  # Ray's agent exports every 10 s
    text = ""
    while "ray_fabric_nodes_finished_total" not in text and time.monotonic() < deadline:
        time.sleep(2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "ray_fabric_nodes_finished_total" in text and "ray_fabric_node_run_seconds_bucket" in text
    # The gateway's own series reach Ray's agent too, under the names the dashboard's `${prefix}` (ray_) gives.
    deadline = time.monotonic() + 40
    while "ray_fabric_gateway_requests_total" not in text and time.monotonic() < deadline:
        time.sleep(2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    agent = {f.name for f in text_string_to_metric_families(text)}
    assert {"ray_fabric_gateway_requests", "ray_fabric_registry_up", "ray_fabric_queue_wait_seconds"} <= agent


def test_the_registry_dying_mid_dag_over_http_status_answers_throughout(gateway, client, tmp_path):
    import ray

    from tests.ray.test_registry_restart import runs, three_step

    http, research, *_ = gateway
    submission_id = http.post("/api/orch/submit", headers=research,
                              json={"dag_spec": three_step(str(tmp_path))}).json()["submission_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = http.get(f"/api/orch/status/{submission_id}", headers=research).json()
        if {n["node_id"]: n["state"] for n in body["nodes"]}["b"] == "RUNNING":
            break
        time.sleep(0.1)
    ray.kill(client._registry, no_restart=False)
    answers: list[tuple[int, str | None, str]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        response = http.get(f"/api/orch/status/{submission_id}", headers=research)
        state = response.json().get("state", "") if response.status_code == 200 else ""
        answers.append((response.status_code, response.headers.get("retry-after"), state))
        if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(0.1)
    assert answers[-1][2] == "SUCCEEDED", answers[-5:]
    assert {code for code, _, _ in answers} <= {200, 503}, answers
    assert all(retry for code, retry, _ in answers if code == 503)  # a 503 always says when to come back
    assert runs(tmp_path, "a") == 1, "a SUCCEEDED before the registry died and must not run again"
    outages = sum(1 for code, _, _ in answers if code == 503)
    print(f"status answered {len(answers)} times while the registry restarted; {outages} of them 503")
