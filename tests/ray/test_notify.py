"""Webhooks on a real local Ray: receivers on loopback (stdlib http.server) get exactly one signed message per event,
and a receiver that fails twice gets the message on the third attempt, each attempt in the registry's audit."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fabric.record.notify import verify
from tests.conftest import REPO

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

SECRET = b"webhook-k3y"
EVERYTHING = ["success", "failure", "node_failure", "sla_miss", "queue_wait"]


class Receiver:
    """A loopback HTTP receiver that answers each POST from a script of statuses (then 200) and keeps them all."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.got: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=t0ps3cret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def messages(self, submission_id: str) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got if json.loads(body)["submission_id"] == submission_id]


@pytest.fixture(scope="module")
def ray_client(fabric_home: Path) -> Iterator[Any]:
    import ray

    import fabric as fb

    (fabric_home / "secrets" / "hooks").mkdir(parents=True)
    (fabric_home / "secrets" / "hooks" / "acme").write_bytes(SECRET + b"\n")
    saved = os.environ.get("FABRIC_WEBHOOK_ALLOW_PRIVATE")
    os.environ["FABRIC_WEBHOOK_ALLOW_PRIVATE"] = "1"  # before Ray starts: the registry inherits it (loopback)
    os.chdir(REPO)
    client = fb.connect("local", num_cpus=2, home=str(fabric_home))
    try:
        yield client
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("FABRIC_WEBHOOK_ALLOW_PRIVATE", None)
        else:
            os.environ["FABRIC_WEBHOOK_ALLOW_PRIVATE"] = saved


def _spec(pipeline_id: str, node: dict[str, Any], url: str | None = None,
          on: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"version": 1, "pipeline_id": pipeline_id, "nodes": [node]}
    if url:
        spec["notify"] = {"webhooks": [{"url": url, "secret": "hooks/acme", "events": on or EVERYTHING}]}
    return spec


def _audit(home: Path, submission_id: str) -> list[tuple[str, str, int, dict[str, Any]]]:
    with sqlite3.connect(f"file:{home / 'fabric.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT source, target, attempt, reason FROM events WHERE submission_id = ? ORDER BY id",
                          (f"_notify:{submission_id}",)).fetchall()
    return [(source, target, attempt, json.loads(reason)) for source, target, attempt, reason in rows]


def _until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_one_signed_success_and_one_failure_message(ray_client: Any, fabric_home: Path) -> None:
    receiver = Receiver()
    ok = ray_client.submit(_spec("notify_ok", {"id": "v", "kind": "python_task", "entrypoint": "tests.nodes:value"},
                                 receiver.url), {})
    bad = ray_client.submit(_spec("notify_bad", {"id": "broken", "kind": "python_task",
                                                 "entrypoint": "tests.nodes:boom"}),
                            {"notify": {"webhooks": [
                                {"url": receiver.url, "secret": "hooks/acme", "events": ["failure"]}]}})
    assert ok.wait(90).state == "SUCCEEDED" and bad.wait(90).state == "FAILED"
    _until(lambda: len(receiver.got) >= 2)
    time.sleep(1.5)  # anything sent twice would have arrived by now
    assert [(m["event"], m["state"]) for m in receiver.messages(ok.id)] == [("success", "SUCCEEDED")]
    assert [(m["event"], m["state"]) for m in receiver.messages(bad.id)] == [("failure", "FAILED")]
    assert len(receiver.got) == 2
    for headers, body in receiver.got:
        assert verify(SECRET, headers["x-fabric-timestamp"], body, headers["x-fabric-signature"], now=time.time())
        assert not verify(b"wrong", headers["x-fabric-timestamp"], body, headers["x-fabric-signature"],
                          now=time.time())
        assert headers["x-fabric-delivery"] == json.loads(body)["delivery_id"]
        assert headers["x-fabric-event"] == json.loads(body)["event"]
    for sid, event in ((ok.id, "success"), (bad.id, "failure")):
        _until(lambda sid=sid: bool(_audit(fabric_home, sid)))
        ((source, target, attempt, reason),) = _audit(fabric_home, sid)
        assert (source, target, attempt, reason["status"]) == (event, "delivered", 1, 200)
        assert reason["url"].startswith("http://127.0.0.1:") and "t0ps3cret" not in json.dumps(reason)


def test_a_failing_receiver_gets_the_message_after_retries_recorded_in_the_audit(ray_client: Any,
                                                                                  fabric_home: Path) -> None:
    flaky = Receiver(503, 500)
    node = {"id": "broken", "kind": "python_task", "entrypoint": "tests.nodes:boom"}
    run = ray_client.submit(_spec("notify_flaky", node, flaky.url, on=["node_failure"]), {})
    assert run.wait(90).state == "FAILED"
    _until(lambda: any(t == "delivered" for _, t, _, _ in _audit(fabric_home, run.id)))  # after 1 s, then 2 s
    audit = _audit(fabric_home, run.id)
    assert [(source, target, attempt, reason.get("status")) for source, target, attempt, reason in audit] == [
        ("node_failure", "retry", 1, 503), ("node_failure", "retry", 2, 500), ("node_failure", "delivered", 3, 200)]
    assert [reason["retry_in_s"] for _, target, _, reason in audit if target == "retry"] == [1.0, 2.0]
    assert len({reason["delivery_id"] for *_, reason in audit}) == 1
    assert len(flaky.got) == 3 and len({body for _, body in flaky.got}) == 1  # the same message each time
    assert json.loads(flaky.got[0][1])["node_id"] == "broken"
    for headers, body in flaky.got:
        assert verify(SECRET, headers["x-fabric-timestamp"], body, headers["x-fabric-signature"], now=time.time())


def _delivered(home: Path, submission_id: str) -> int:
    return sum(1 for _, target, _, _ in _audit(home, submission_id) if target == "delivered")


def test_a_registry_restart_sends_nothing_twice(ray_client: Any, fabric_home: Path) -> None:
    import ray

    receiver = Receiver()
    done = ray_client.submit(_spec("notify_before", {"id": "v", "kind": "python_task",
                                                     "entrypoint": "tests.nodes:value"}, receiver.url, on=["success"]),
                             {})
    assert done.wait(90).state == "SUCCEEDED"
    _until(lambda: _delivered(fabric_home, done.id) == 1)
    running = ray_client.submit(_spec("notify_across", {"id": "nap", "kind": "python_task",
                                                        "entrypoint": "tests.nodes:sleeper", "params": {"seconds": 3}},
                                      receiver.url, on=["success"]), {})
    time.sleep(1.0)
    # Ray restarts the registry: it replays recent runs, finds `done`'s message delivered, and resumes `running`.
    ray.kill(ray_client._registry, no_restart=False)
    time.sleep(0.5)
    assert running.wait(90).state == "SUCCEEDED"
    _until(lambda: _delivered(fabric_home, running.id) == 1)
    time.sleep(2.0)  # anything sent twice would have arrived by now
    assert [m["event"] for m in receiver.messages(done.id)] == ["success"]
    assert [m["event"] for m in receiver.messages(running.id)] == ["success"]
    assert _delivered(fabric_home, done.id) == 1
