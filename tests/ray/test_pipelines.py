"""Pipelines through the real gateway and registry: typed params end to end (status, metrics.json, lineage),
the catalogue (versions, runs by name, team isolation), max_active_runs with skip and cancel_older, and the
same methods on the Ray client and the HTTP client."""

from __future__ import annotations

import json
import time
import urllib.parse

import httpx
import pytest

from fabric.actors.schedules import SCHEDULE_INTERVAL_S
from serve.auth import mint_token
from tests.conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

SLEEPER = {
    "version": 1, "pipeline_id": "nightly",
    "params": {"seconds": {"type": "float", "default": 0.1}, "as_of": {"type": "date", "default": "2024-01-31"}},
    "nodes": [{"id": "wait", "kind": "python_task", "entrypoint": "tests.nodes:sleeper",
               "params": {"seconds": "{{ params.seconds }}"}, "description": "as of {{ params.as_of }}"}],
}


@pytest.fixture(scope="module")
def gateway(client, tmp_path_factory):
    from ray import serve

    from fabric.cli.gateway import start_gateway

    tokens_file = tmp_path_factory.mktemp("gateway") / "tokens.yaml"
    research, trading = mint_token(tokens_file, "research"), mint_token(tokens_file, "trading")
    url = start_gateway(tokens_file, free_port())
    with httpx.Client(base_url=url, timeout=60) as http:
        yield http, {"Authorization": f"Bearer {research}"}, {"Authorization": f"Bearer {trading}"}, research
    serve.shutdown()


def _wait(http, headers, submission_id, timeout=90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"/api/orch/status/{submission_id}", headers=headers).json()
        if body["state"] != "RUNNING":
            return body
        time.sleep(0.3)
    raise AssertionError(f"{submission_id} still RUNNING")


def test_register_and_run_by_name_with_params_recorded_everywhere(gateway):
    http, research, trading, _ = gateway
    made = http.post("/api/orch/pipelines", headers=research, json={"dag_spec": SLEEPER})
    assert made.status_code == 201, made.text
    assert (made.json()["version"], made.json()["created"]) == (1, True)
    same = http.post("/api/orch/pipelines", headers=research, json={"dag_spec": SLEEPER}).json()
    assert (same["version"], same["created"]) == (1, False)
    assert [p["pipeline_id"] for p in http.get("/api/orch/pipelines", headers=research).json()["items"]] == ["nightly"]
    assert http.get("/api/orch/pipelines", headers=trading).json()["items"] == []
    assert http.get("/api/orch/pipelines/nightly/versions", headers=trading).status_code == 404

    started = http.post("/api/orch/pipelines/nightly/runs", headers=research,
                        json={"params": {"as_of": "2024-02-29", "seconds": 0.2}})
    assert started.status_code == 202, started.text
    sid = started.json()["submission_id"]
    assert started.headers["location"] == f"/api/orch/status/{urllib.parse.quote(sid, safe=':')}"
    status = _wait(http, research, sid)
    assert status["state"] == "SUCCEEDED" and status["params"] == {"seconds": 0.2, "as_of": "2024-02-29"}
    runs = http.get("/api/orch/pipelines/nightly/runs", headers=research).json()["items"]
    assert [(r["submission_id"], r["version"], r["params"]["as_of"]) for r in runs] == [(sid, 1, "2024-02-29")]
    deadline = time.monotonic() + 30  # the report is written in the background when the run ends
    while (report := http.get(f"/api/orch/artifacts/{sid}/metrics.json", headers=research)).status_code != 200:
        assert time.monotonic() < deadline, report.text
        time.sleep(0.3)
    assert json.loads(report.content)["params"] == {"seconds": 0.2, "as_of": "2024-02-29"}
    lineage = http.get(f"/api/orch/lineage/{sid}", headers=research).json()["events"]
    facets = [e["run"]["facets"]["fabric_submission"] for e in lineage if "fabric_submission" in e["run"]["facets"]]
    assert facets and all(f["params"]["as_of"] == "2024-02-29" for f in facets)


def test_bad_params_and_options_are_422_naming_the_field(gateway):
    http, research, *_ = gateway
    http.post("/api/orch/pipelines", headers=research, json={"dag_spec": SLEEPER})
    before = http.get("/api/orch/submissions", headers=research).json()["items"]
    for params, where in (({"as_of": "2024-13-01"}, "runtime_params.params.as_of"),
                          ({"sconds": 1}, "runtime_params.params.sconds"),
                          ({"seconds": "1"}, "runtime_params.params.seconds")):
        response = http.post("/api/orch/pipelines/nightly/runs", headers=research, json={"params": params})
        assert response.status_code == 422, response.text
        assert [p["where"] for p in response.json()["problems"]] == [where]
    bad = http.post("/api/orch/pipelines", headers=research, json={"dag_spec": SLEEPER, "overlap": "sometimes"})
    assert bad.status_code == 422 and [p["where"] for p in bad.json()["problems"]] == ["overlap"]
    direct = http.post("/api/orch/submit", headers=research,
                       json={"dag_spec": SLEEPER, "runtime_params": {"params": {"seconds": True}}})
    assert direct.status_code == 422 and direct.json()["problems"][0]["code"] == "PARAM_TYPE"
    assert http.post("/api/orch/pipelines/ghost/runs", headers=research, json={}).status_code == 404
    assert http.get("/api/orch/submissions", headers=research).json()["items"] == before


def test_max_active_runs_skip_then_cancel_older(gateway):
    http, research, *_ = gateway
    slow = {**SLEEPER, "pipeline_id": "hourly"}
    http.post("/api/orch/pipelines", headers=research, json={"dag_spec": slow, "max_active_runs": 1})
    first = http.post("/api/orch/pipelines/hourly/runs", headers=research, json={"params": {"seconds": 60}}).json()
    skipped = http.post("/api/orch/pipelines/hourly/runs", headers=research, json={}).json()
    assert skipped["skipped"] and skipped["submission_id"] is None and first["submission_id"] in skipped["reason"]
    v2 = http.post("/api/orch/pipelines", headers=research,
                   json={"dag_spec": slow, "max_active_runs": 1, "overlap": "cancel_older"}).json()
    assert v2["version"] == 2
    newer = http.post("/api/orch/pipelines/hourly/runs", headers=research, json={}).json()
    assert newer["cancelled"] == [first["submission_id"]] and newer["version"] == 2
    assert _wait(http, research, first["submission_id"], 30)["state"] == "CANCELLED"
    assert _wait(http, research, newer["submission_id"])["state"] == "SUCCEEDED"


def test_the_same_methods_on_the_ray_client_and_the_http_client(gateway, client):
    import fabric as fb

    http, _, _, token = gateway
    remote = fb.connect(str(http.base_url), token=token)
    spec = {**SLEEPER, "pipeline_id": "sdk"}
    for side in (remote, client):  # the HTTP one is team research; the Ray one has no team: two catalogues
        assert side.register(spec)["version"] == 1
        assert "sdk" in [p["pipeline_id"] for p in side.pipelines()]
        reply = side.run_pipeline("sdk", {"as_of": "2024-03-01"})
        assert side.get(reply["submission_id"]).wait(90).params["as_of"] == "2024-03-01"
        assert side.pipeline_versions("sdk")[0]["spec"]["pipeline_id"] == "sdk"
        assert [r["submission_id"] for r in side.pipeline_runs("sdk")] == [reply["submission_id"]]
    remote.close()


def test_a_schedule_fires_each_minute_exactly_once_across_a_registry_kill(gateway, client):
    """Real minutes: the registry is killed just before a tick, so the tick comes due while it restarts and is
    caught up after it (catch_up all); it is killed again just after that run started, and the tick still has
    exactly one run, with the tick's own submission id."""
    import ray

    http, research, *_ = gateway
    bad = http.post("/api/orch/pipelines/nightly/schedules", headers=research,
                    json={"name": "x", "cron": "61 * * * *"})
    assert bad.status_code == 422 and [p["where"] for p in bad.json()["problems"]] == ["cron"]
    client.register({**SLEEPER, "pipeline_id": "ticking"})
    made = client.schedule("ticking", {"name": "minutely", "cron": "* * * * *", "catch_up": "all",
                                       "params": {"as_of": "2024-05-01"}})
    tick = made["next_fires"][0]
    assert len(made["next_fires"]) == 3 and tick > time.time()
    assert [s["name"] for s in client.schedules("ticking")] == ["minutely"]

    def runs() -> list[dict]:
        return client.pipeline_runs("ticking", 100)

    time.sleep(max(tick - 0.3 - time.time(), 0.0))
    assert runs() == []  # not due yet
    ray.kill(client._registry, no_restart=False)  # down while the tick comes due
    deadline = time.monotonic() + 90
    while not runs():
        assert time.monotonic() < deadline, "the tick due while the registry restarted never fired"
        time.sleep(0.5)
    ray.kill(client._registry, no_restart=False)  # again, just after its run started
    time.sleep(0.5)
    runs()  # the registry is back (the client waits for it) ...
    time.sleep(3 * SCHEDULE_INTERVAL_S)  # ... and has looked for due ticks since
    fired = runs()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(tick))
    assert [r["submission_id"].rsplit("-", 1)[1] for r in fired] == [stamp], fired  # once, the tick's own id
    assert all(r["params"]["as_of"] == "2024-05-01" for r in fired)
    paused = client.pause_schedule("ticking", "minutely")
    assert paused["paused"] and paused["next_fires"] == []


def _executions(marker_dir, name: str) -> int:
    from pathlib import Path

    return len(list(Path(marker_dir).glob(f"{name}.*")))


def test_rerun_from_failure_reuses_succeeded_nodes_without_recomputing(gateway, client, tmp_path):
    http, research, *_ = gateway
    marks = str(tmp_path / "marks")
    node = "tests.nodes:counted"
    spec = {"version": 1, "pipeline_id": "factors", "nodes": [
        {"id": "make_data", "kind": "python_task", "entrypoint": node, "outs": ["raw"],
         "params": {"marker_dir": marks, "name": "make_data"}},
        {"id": "features", "kind": "python_task", "entrypoint": node, "ins": ["raw"], "outs": ["table"],
         "params": {"marker_dir": marks, "name": "features"}},
        {"id": "fit", "kind": "python_task", "entrypoint": "tests.nodes:fails_first", "ins": ["table"],
         "outs": ["model"], "params": {"marker_dir": marks, "name": "fit"}},
        {"id": "report", "kind": "python_task", "entrypoint": node, "ins": ["model"],
         "params": {"marker_dir": marks, "name": "report"}}]}
    first = http.post("/api/orch/submit", headers=research, json={"dag_spec": spec}).json()["submission_id"]
    failed = _wait(http, research, first)
    assert failed["state"] == "FAILED"
    assert {n["node_id"]: n["state"] for n in failed["nodes"]} == {
        "make_data": "SUCCEEDED", "features": "SUCCEEDED", "fit": "FAILED", "report": "SKIPPED"}
    ghost = http.post(f"/api/orch/rerun/{first}", headers=research, json={"from_node": "ghost"})
    assert ghost.status_code == 422 and ghost.json()["problems"][0]["where"] == "from_node"
    reply = http.post(f"/api/orch/rerun/{first}", headers=research, json={"from_node": "fit"})
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert (body["reused"], body["rerun"], body["rerun_of"]) == (["features", "make_data"], ["fit", "report"], first)
    status = _wait(http, research, body["submission_id"])
    assert status["state"] == "SUCCEEDED", status
    nodes = {n["node_id"]: n for n in status["nodes"]}
    assert nodes["make_data"]["state"] == nodes["features"]["state"] == "CACHED"
    assert first in nodes["features"]["reason"] and "reused" in nodes["features"]["reason"]
    # The execution counters: make_data and features ran once in all; fit twice (failed, then re-run).
    assert [_executions(marks, n) for n in ("make_data", "features", "fit", "report")] == [1, 1, 2, 1]
    lineage = http.get(f"/api/orch/lineage/{body['submission_id']}", headers=research).json()["events"]
    reused = [e for e in lineage if e["job"]["name"] == "factors.features" and e["eventType"] == "COMPLETE"]
    assert reused and "reused" in str(reused[0]["run"]["facets"])
    listed = http.get("/api/orch/submissions", params={"label": f"fabric.rerun_of:{first}"}, headers=research)
    assert [i["submission_id"] for i in listed.json()["items"]] == [body["submission_id"]]
    # Over the SDK: a re-run of the re-run has nothing left that failed.
    with pytest.raises(Exception, match="nothing to re-run"):
        client.rerun(body["submission_id"])


def test_a_pipeline_node_runs_the_teams_registered_pipeline_nested_and_cycles_are_refused(gateway):
    import fabric as fb

    http, research, trading, token = gateway
    child = {"version": 1, "pipeline_id": "child_sum", "params": {"x": {"type": "float", "default": 1.0}},
             "nodes": [{"id": "make", "kind": "python_task", "entrypoint": "tests.nodes:value",
                        "params": {"x": "{{ params.x }}"}, "outs": ["made"]},
                       {"id": "plus", "kind": "python_task", "entrypoint": "tests.nodes:add", "params": {"b": 10.0},
                        "ins": ["a=made"], "outs": ["total"]}]}
    assert http.post("/api/orch/pipelines", headers=research, json={"dag_spec": child}).status_code == 201
    parent = {"version": 1, "pipeline_id": "outer", "nodes": [
        {"id": "sub", "kind": "pipeline", "params": {"pipeline": "child_sum", "params": {"x": 2.0}}, "outs": ["total"]},
        {"id": "report", "kind": "python_task", "entrypoint": "tests.nodes:echo", "ins": ["a=total"],
         "when": "total > 0"}]}
    remote = fb.connect(str(http.base_url), token=token)
    run = remote.submit(parent)
    status = run.wait(90)
    assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
    assert [(n.node_id, n.state) for n in status.nodes] == [
        ("sub.make", "SUCCEEDED"), ("sub.plus", "SUCCEEDED"), ("report", "SUCCEEDED")]
    assert "echo a=12.0" in run.logs("report")  # x=2 from the parent, plus 10 in the child
    remote.close()
    # Another team's catalogue does not have it: a team runs only its own pipelines.
    denied = http.post("/api/orch/submit", headers=trading, json={"dag_spec": parent})
    assert denied.status_code == 422, denied.text
    assert [p["where"] for p in denied.json()["problems"]] == ["nodes[0].params.pipeline"]
    # A cycle through registered pipelines is refused when the version that closes it is registered.
    loop_b = {"version": 1, "pipeline_id": "loop_b",
              "nodes": [{"id": "inner", "kind": "pipeline", "params": {"pipeline": "child_sum"}}]}
    assert http.post("/api/orch/pipelines", headers=research, json={"dag_spec": loop_b}).status_code == 201
    back = {"id": "back", "kind": "pipeline", "params": {"pipeline": "loop_b"}}
    closing = {**child, "nodes": [*child["nodes"], back]}
    refused = http.post("/api/orch/pipelines", headers=research, json={"dag_spec": closing})
    assert refused.status_code == 422, refused.text
    assert refused.json()["problems"][0]["code"] == "SPEC_CYCLE"
    assert "child_sum -> loop_b -> child_sum" in refused.json()["problems"][0]["message"]
