"""Backfills and event triggers through the real gateway and registry: six dates two at a time with progress
counts, a repeat that skips the succeeded dates, cancel as a whole, bad input as 422s naming the field, and a
trigger whose key, sent twice, starts one run."""

from __future__ import annotations

import time

import httpx
import pytest

from serve.auth import mint_token
from tests.conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

DAILY = {
    "version": 1, "pipeline_id": "daily",
    "params": {"seconds": {"type": "float", "default": 0.3}, "as_of": {"type": "date", "default": "2024-01-31"}},
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
        made = http.post("/api/orch/pipelines", headers={"Authorization": f"Bearer {research}"},
                         json={"dag_spec": DAILY})
        assert made.status_code == 201, made.text
        yield http, {"Authorization": f"Bearer {research}"}, {"Authorization": f"Bearer {trading}"}, url, research
    serve.shutdown()


def _follow(http, headers, bid, timeout=120) -> tuple[dict, int]:
    """Poll a backfill until it ends; returns its last status and the most runs seen RUNNING at once."""
    deadline, most = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        body = http.get(f"/api/orch/backfills/{bid}", headers=headers).json()
        most = max(most, body["counts"]["RUNNING"])
        if body["state"] != "RUNNING":
            return body, most
        time.sleep(0.2)
    raise AssertionError(f"backfill {bid} still RUNNING: {body['counts']}")


def test_a_backfill_runs_two_at_a_time_and_a_repeat_skips_what_succeeded(gateway):
    http, research, trading, url, token = gateway
    request = {"start": "2024-01-01", "end": "2024-01-06", "max_active": 2, "backfill_id": "jan"}
    made = http.post("/api/orch/pipelines/daily/backfills", headers=research, json=request)
    assert made.status_code == 201, made.text
    assert made.headers["location"] == "/api/orch/backfills/jan"
    body = made.json()
    assert (body["total"], body["counts"]["RUNNING"], body["counts"]["PENDING"]) == (6, 2, 4)
    again = http.post("/api/orch/pipelines/daily/backfills", headers=research, json=request)
    assert again.status_code == 200 and again.json()["created"] is False  # a retried create: the same one
    assert http.get("/api/orch/backfills/jan", headers=trading).status_code == 404  # another team's

    done, most = _follow(http, research, "jan")
    assert most == 2  # never more than max_active at once
    assert done["state"] == "SUCCEEDED" and done["counts"]["SUCCEEDED"] == 6, done
    assert [r["date"] for r in done["runs"]] == [f"2024-01-0{d}" for d in range(1, 7)]
    first = http.get(f"/api/orch/status/{done['runs'][0]['submission_id']}", headers=research).json()
    assert first["params"] == {"seconds": 0.3, "as_of": "2024-01-01"}

    # A second backfill over Jan 4-8: the three succeeded dates are skipped, the two new ones run.
    repeat = http.post("/api/orch/pipelines/daily/backfills", headers=research,
                       json={"start": "2024-01-04", "end": "2024-01-08", "max_active": 2, "backfill_id": "jan2"})
    assert repeat.status_code == 201, repeat.text
    assert repeat.json()["counts"]["SKIPPED"] == 3
    ended, _ = _follow(http, research, "jan2")
    assert (ended["state"], ended["counts"]["SKIPPED"], ended["counts"]["SUCCEEDED"]) == ("SUCCEEDED", 3, 2)

    # The HTTP client (one signature with the Ray client) sees the same backfills, newest first.
    import fabric as fb

    with fb.connect(url, token=token) as sdk:
        assert [b["backfill_id"] for b in sdk.backfills("daily")] == ["jan2", "jan"]
        assert sdk.backfill_status("jan")["counts"]["SUCCEEDED"] == 6


def test_cancel_a_backfill_as_a_whole(gateway):
    http, research, _, _, _ = gateway
    made = http.post("/api/orch/pipelines/daily/backfills", headers=research, json={
        "start": "2024-02-01", "end": "2024-02-04", "max_active": 2, "params": {"seconds": 30},
        "backfill_id": "slow"})
    assert made.status_code == 201, made.text
    cancelled = http.post("/api/orch/backfills/slow/cancel", headers=research)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    deadline = time.monotonic() + 60
    while (body := http.get("/api/orch/backfills/slow", headers=research).json())["counts"]["CANCELLED"] < 2:
        assert time.monotonic() < deadline, body
        time.sleep(0.3)
    time.sleep(1.5)  # the registry looks every second: nothing more starts
    body = http.get("/api/orch/backfills/slow", headers=research).json()
    assert body["state"] == "CANCELLED" and body["counts"]["PENDING"] == 2 and body["counts"]["RUNNING"] == 0


@pytest.mark.parametrize(("change", "where"), [
    ({"end": "2023-12-01"}, "end"),
    ({"step": "1y"}, "step"),
    ({"max_active": 0}, "max_active"),
    ({"end": "2030-01-01"}, "end"),  # over 1000 dates
    ({"params": {"colour": "red"}}, "params.colour"),
    ({"params": {"seconds": "slow"}}, "params.seconds"),
    ({"date_param": "seconds"}, "date_param"),
])
def test_bad_backfills_are_422_naming_the_field(gateway, change, where):
    http, research, _, _, _ = gateway
    answer = http.post("/api/orch/pipelines/daily/backfills", headers=research,
                       json={"start": "2024-01-01", "end": "2024-01-31", **change})
    assert answer.status_code == 422, answer.text
    assert where in [p["where"] for p in answer.json().get("problems", [])] + [answer.json().get("where")]


def test_a_trigger_key_sent_twice_starts_one_run(gateway):
    http, research, trading, _, _ = gateway
    headers = {**research, "Idempotency-Key": "vendor-delivery-1"}
    first = http.post("/api/orch/pipelines/daily/trigger", headers=headers, json={"params": {"as_of": "2024-03-01"}})
    assert first.status_code == 201, first.text
    second = http.post("/api/orch/pipelines/daily/trigger", headers=headers, json={"params": {"as_of": "2024-03-01"}})
    assert second.status_code == 200, second.text
    sid = first.json()["submission_id"]
    assert second.json()["submission_id"] == sid and second.json()["created"] is False
    runs = http.get("/api/orch/pipelines/daily/runs", headers=research, params={"limit": 100}).json()["items"]
    assert [r["submission_id"] for r in runs].count(sid) == 1
    assert sum(r["params"]["as_of"] == "2024-03-01" for r in runs) == 1
    other = http.post("/api/orch/pipelines/daily/trigger", headers=headers, json={"params": {"as_of": "2024-03-02"}})
    assert other.status_code == 409 and other.json()["code"] == "IDEMPOTENCY_CONFLICT"
    missing = http.post("/api/orch/pipelines/daily/trigger", headers=research, json={})
    assert missing.status_code == 422 and missing.json()["where"] == "Idempotency-Key"
    theirs = http.post("/api/orch/pipelines/daily/trigger", headers={**trading, "Idempotency-Key": "vendor-delivery-1"},
                       json={})
    assert theirs.status_code == 404  # the pipeline is research's
