"""Notifications: the notify section's validation, signing, SSRF rules, which events mean which messages (a fake
clock), the retry schedule, and the Notifier's delivery, audit and restart behaviour on a memory store."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fabric.errors import ErrorCode, FabricError, SpecError
from fabric.execute.notify import Notifier, NotifyingStore
from fabric.execute.webhook import Refused, post
from fabric.plan import compile_plan
from fabric.record import Event, MemoryStore, SubmissionRecord
from fabric.record.notify import (
    NoticeTracker,
    delivery_history,
    retry_delay,
    run_notify,
    signature,
    verify,
    worth_retrying,
)
from fabric.schedule.grants import TeamGrants, check_submission
from fabric.spec import load_spec, parse_runtime_params
from fabric.spec.notify import NotifyEvent, address_problem
from fabric.states import NOTIFY_SUBJECT, EventKind

HOOK = {"url": "https://hooks.example.com/fabric?token=abc", "secret": "hooks/acme",
        "events": ["success", "failure", "node_failure", "sla_miss", "queue_wait"]}


def _spec(**extra: Any) -> dict[str, Any]:
    return {"version": 1, "pipeline_id": "p", "nodes": [{"id": "a", "kind": "python_task",
                                                         "entrypoint": "m:f", "outs": ["x"]},
                                                        {"id": "b", "kind": "python_task",
                                                         "entrypoint": "m:g", "ins": ["x"]}], **extra}


def _problems(spec: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    return {p.where: p.message for p in caught.value.problems}


# --- the spec ---------------------------------------------------------------------------------------------------

def test_notify_is_a_validated_section() -> None:
    dag = load_spec(_spec(notify={"webhooks": [HOOK], "queue_wait": "10m"}, slo={"deadline": "30m"}))
    assert dag.notify is not None and dag.notify.queue_wait == 600 and dag.slo and dag.slo.deadline == 1800
    assert dag.notify.webhooks[0].events == list(NotifyEvent)
    assert load_spec(dag.to_dict()) == dag  # round trip


def test_the_yaml_of_the_docs_loads() -> None:
    text = (Path(__file__).parents[2] / "docs" / "notify.md").read_text().split("```yaml\n", 1)[1].split("```")[0]
    text = text.replace("nodes: [...]", "nodes: [{id: a, kind: python_task, entrypoint: 'm:f'}]")
    dag = load_spec(text)
    assert dag.notify is not None and dag.notify.webhooks[0].events == list(NotifyEvent)
    assert dag.slo is not None and dag.slo.deadline == 2700


@pytest.mark.parametrize(("hook", "field"), [
    ({"url": "ftp://h/x"}, "notify.webhooks[0].url"),
    ({"url": "file:///etc/passwd"}, "notify.webhooks[0].url"),
    ({"url": "https://user:pw@h/x"}, "notify.webhooks[0].url"),
    ({"url": "https:///nohost"}, "notify.webhooks[0].url"),
    ({"events": ["success", "exploded"]}, "notify.webhooks[0].events[1]"),
    ({"secret": "s3cr3t-value-inline"}, "notify.webhooks[0].secret"),
    ({"secret": "../etc/passwd"}, "notify.webhooks[0].secret"),
    ({"headers": {"a": "b"}}, "notify.webhooks[0].headers"),
])
def test_a_bad_webhook_names_its_field(hook: dict[str, Any], field: str) -> None:
    problems = _problems(_spec(notify={"webhooks": [{**HOOK, **hook}]}))
    assert field in problems, problems


def test_deadline_is_the_dags_and_positive() -> None:
    bad_node = _spec()
    bad_node["nodes"][0]["slo"] = {"deadline": "5m"}
    assert "nodes[0].slo.deadline" in _problems(bad_node)
    assert "slo.deadline" in _problems(_spec(slo={"deadline": "0s"}))


def test_a_webhook_secret_is_a_claim_held_to_the_teams_grants() -> None:
    dag = load_spec(_spec(notify={"webhooks": [HOOK]}))
    granted = TeamGrants(secrets_scopes=("hooks",))
    check_submission(granted, "t", dag, parse_runtime_params({}))  # no need to hand the key to the nodes
    with pytest.raises(FabricError) as caught:
        check_submission(TeamGrants(secrets_scopes=("lake-*",)), "t", dag, parse_runtime_params({}))
    assert caught.value.code == ErrorCode.FORBIDDEN and caught.value.where == "notify.webhooks[0].secret"
    other = parse_runtime_params({"notify": {"webhooks": [{**HOOK, "secret": "other/k"}]}})
    with pytest.raises(FabricError) as caught:
        check_submission(granted, "t", dag, other)
    assert caught.value.where == "runtime_params.notify.webhooks[0].secret"
    compile_plan(dag, other)  # without grants (an admin, a local Ray client) any head scope signs


def test_runtime_notify_validates_too() -> None:
    with pytest.raises(SpecError) as caught:
        parse_runtime_params({"notify": {"webhooks": [{**HOOK, "url": "gopher://x"}]}})
    assert any("notify.webhooks[0].url" in p.where for p in caught.value.problems)


# --- signing and addresses ---------------------------------------------------------------------------------------

def test_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    body = b'{"event":"success"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(b"k", 1700000000, body) == f"sha256={expected}"
    header = signature(b"k", 1700000000, body)
    assert verify(b"k", "1700000000", body, header, now=1700000100)
    assert not verify(b"k", "1700000000", body + b" ", header, now=1700000100)  # tampered
    assert not verify(b"other", "1700000000", body, header, now=1700000100)  # wrong key
    assert not verify(b"k", "1700000000", body, header, now=1700009999)  # replayed later
    assert not verify(b"k", "1700000001", body, header, now=1700000100)  # timestamp changed


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "169.254.169.254", "10.1.2.3", "192.168.0.1",
                                     "172.16.5.5", "::ffff:127.0.0.1", "fe80::1", "fd00::1"])
def test_the_heads_own_network_is_refused_unless_allowed(address: str) -> None:
    assert address_problem(address, allow_private=False) is not None
    assert address_problem(address, allow_private=True) is None


def test_public_and_never_addresses() -> None:
    assert address_problem("93.184.216.34", False) is None
    assert address_problem("0.0.0.0", True) is not None
    assert address_problem("224.0.0.1", True) is not None


# --- events to notices (fake clock) -------------------------------------------------------------------------------

def _record(sid: str = "s1", created: float = 1000.0, runtime: dict[str, Any] | None = None,
            **spec: Any) -> SubmissionRecord:
    return SubmissionRecord(sid, "p", _spec(**spec), runtime or {}, "ph", "rh", created, team="t")


def _tracker(**spec: Any) -> NoticeTracker:
    notify = run_notify(_record(**spec))
    assert notify is not None
    tracker = NoticeTracker()
    tracker.watch(notify)
    return tracker


def test_run_success_and_failure_mean_one_message_each() -> None:
    tracker = _tracker(notify={"webhooks": [HOOK]})
    done = Event("s1", None, "RUNNING", "SUCCEEDED", 1010.0)
    (notice,) = tracker.feed(done)
    assert notice.event is NotifyEvent.SUCCESS
    body = json.loads(notice.body)
    assert body["event"] == "success" and body["state"] == "SUCCEEDED" and body["delivery_id"] == notice.delivery_id
    assert body["pipeline_id"] == "p" and body["team"] == "t"
    assert tracker.feed(done) == [] and not tracker.watching("s1") and tracker.ended("s1")
    failing = _tracker(notify={"webhooks": [HOOK]})
    assert [n.event for n in failing.feed(Event("s1", None, "RUNNING", "CANCELLED", 1010.0))] == ["failure"]


def test_node_failure_and_timeouts() -> None:
    tracker = _tracker(notify={"webhooks": [HOOK]})
    assert tracker.feed(Event("s1", "a", "RUNNING", "RETRYING", 1001.0)) == []  # retries left: not a failure
    assert [(n.event, n.node_id) for n in tracker.feed(Event("s1", "a", "RUNNING", "FAILED", 1002.0, 2))] == \
        [("node_failure", "a")]
    events = [n.event for n in tracker.feed(Event("s1", "b", "RUNNING", "TIMED_OUT", 1003.0))]
    assert events == ["node_failure", "sla_miss"]
    # The run timing out is its failure; the SLA miss was already sent once for this run.
    assert [n.event for n in tracker.feed(Event("s1", None, "RUNNING", "TIMED_OUT", 1004.0))] == ["failure"]


def test_deadline_and_queue_wait_with_a_fake_clock() -> None:
    tracker = _tracker(notify={"webhooks": [HOOK], "queue_wait": "60s"}, slo={"deadline": "5m"})
    assert tracker.next_due() == 1300.0
    tracker.feed(Event("s1", "a", "PENDING", "QUEUED", 1000.0))
    tracker.feed(Event("s1", "b", "PENDING", "QUEUED", 1010.0))
    assert tracker.next_due() == 1060.0
    assert tracker.tick(1059.0) == []
    (wait,) = tracker.tick(1061.0)
    assert wait.event is NotifyEvent.QUEUE_WAIT and wait.node_id == "a"
    assert tracker.tick(1200.0) == []  # once per run
    assert tracker.tick(1299.0) == []
    (late,) = tracker.tick(1301.0)
    assert late.event is NotifyEvent.SLA_MISS and json.loads(late.body)["state"] == "RUNNING"
    assert tracker.tick(1400.0) == [] and tracker.next_due() is None


def test_replayed_events_find_what_the_clock_would_have() -> None:
    tracker = _tracker(notify={"webhooks": [HOOK], "queue_wait": "60s"}, slo={"deadline": "5m"})
    tracker.feed(Event("s1", "a", "PENDING", "QUEUED", 1000.0))
    assert [n.event for n in tracker.feed(Event("s1", "a", "QUEUED", "RUNNING", 1100.0))] == ["queue_wait"]
    assert [n.event for n in tracker.feed(Event("s1", None, "RUNNING", "SUCCEEDED", 1400.0))] == \
        ["sla_miss", "success"]


def test_webhooks_hear_only_their_events_and_ids_are_stable_across_restarts() -> None:
    quiet = {**HOOK, "url": "https://other.example.com/", "events": ["failure"]}
    runtime = {"notify": {"webhooks": [quiet]}}
    first = NoticeTracker()
    second = NoticeTracker()
    for tracker in (first, second):
        notify = run_notify(_record(runtime=runtime, notify={"webhooks": [HOOK]}))
        assert notify is not None
        tracker.watch(notify)
    end = Event("s1", None, "RUNNING", "FAILED", 1010.0, reason="node a failed")
    ids = [n.delivery_id for n in first.feed(end)]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert [n.delivery_id for n in second.feed(end)] == ids
    assert run_notify(_record()) is None


def test_retry_schedule() -> None:
    assert [retry_delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 16, 32]
    assert retry_delay(20) == 300
    assert all(worth_retrying(s) for s in (None, 408, 429, 500, 503))
    assert not any(worth_retrying(s) for s in (400, 401, 404, 410))


# --- the notifier on a memory store -----------------------------------------------------------------------------

class FakeSender:
    """Answers from a script: an int is a status, an exception is raised; records every call."""

    def __init__(self, *script: int | Exception) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str], allow_private: bool) -> int:
        self.calls.append((url, body, headers))
        answer = self.script.pop(0) if self.script else 200
        if isinstance(answer, Exception):
            raise answer
        return answer


def _store_with_run(tmp_path: Path) -> MemoryStore:
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "acme").write_text("k3y\n")
    store = MemoryStore()
    store.add_submission(_record(notify={"webhooks": [HOOK]}))
    return store


def _audit(store: MemoryStore) -> list[Event]:
    store.flush()
    return store.events(NOTIFY_SUBJECT + "s1")


def test_failures_are_retried_with_backoff_and_every_attempt_is_audited(tmp_path: Path) -> None:
    store = _store_with_run(tmp_path)
    sender = FakeSender(OSError("connection refused"), 503, 200)
    notifier = Notifier(store, str(tmp_path), sender=sender, delay=lambda attempt: 0.01 * attempt)
    wrapped = NotifyingStore(store, notifier)
    wrapped.append_events([Event("s1", "a", "QUEUED", "RUNNING", 1001.0),
                           Event("s1", None, "RUNNING", "SUCCEEDED", 1002.0)])
    assert notifier.drain(10)
    assert len(sender.calls) == 3
    bodies = {body for _, body, _ in sender.calls}
    assert len(bodies) == 1  # the same message every time
    _, body, headers = sender.calls[-1]
    assert verify(b"k3y", headers["X-Fabric-Timestamp"], body, headers["X-Fabric-Signature"],
                  now=int(headers["X-Fabric-Timestamp"]))
    audit = _audit(store)
    assert [(e.target, e.attempt) for e in audit] == [("retry", 1), ("retry", 2), ("delivered", 3)]
    assert "abc" not in "".join(e.reason for e in audit)  # the URL's token is not in the audit
    assert json.loads(audit[1].reason)["status"] == 503


def test_a_restarted_notifier_sends_nothing_twice(tmp_path: Path) -> None:
    store = _store_with_run(tmp_path)
    events = [Event("s1", "a", "RUNNING", "FAILED", 1001.0), Event("s1", None, "RUNNING", "FAILED", 1002.0)]
    store.append_events(events[:1])
    first = FakeSender()
    notifier = Notifier(store, str(tmp_path), sender=first, clock=lambda: 1003.0)
    NotifyingStore(store, notifier).append_events(events[1:])
    assert notifier.drain(10)
    assert sorted(json.loads(b)["event"] for _, b, _ in first.calls) == ["failure", "node_failure"]
    # A new registry on the same store: it replays the run and finds both delivered in the audit.
    again = FakeSender()
    assert Notifier(store, str(tmp_path), sender=again, clock=lambda: 1004.0).drain(10)
    assert again.calls == []
    assert [e.target for e in _audit(store)] == ["delivered", "delivered"]


def test_a_restart_sends_what_was_not_delivered(tmp_path: Path) -> None:
    store = _store_with_run(tmp_path)
    store.append_events([Event("s1", None, "RUNNING", "SUCCEEDED", 1002.0)])  # recorded, then the registry died
    sender = FakeSender()
    assert Notifier(store, str(tmp_path), sender=sender, clock=lambda: 1003.0).drain(10)
    assert [json.loads(b)["event"] for _, b, _ in sender.calls] == ["success"]


def test_refusals_and_missing_secrets_give_up_at_once(tmp_path: Path) -> None:
    store = _store_with_run(tmp_path)
    notifier = Notifier(store, str(tmp_path), sender=FakeSender(Refused("loopback"), 404))
    NotifyingStore(store, notifier).append_events([Event("s1", "a", "RUNNING", "FAILED", 1001.0),
                                                    Event("s1", None, "RUNNING", "FAILED", 1002.0)])
    assert notifier.drain(10)
    assert [(e.target, e.attempt) for e in _audit(store)] == [("gave-up", 1), ("gave-up", 1)]
    (tmp_path / "hooks" / "acme").unlink()
    other = MemoryStore()
    other.add_submission(_record(notify={"webhooks": [HOOK]}))
    notifier = Notifier(other, str(tmp_path), sender=FakeSender())
    NotifyingStore(other, notifier).append_events([Event("s1", None, "RUNNING", "SUCCEEDED", 1002.0)])
    assert notifier.drain(10)
    (gave_up,) = _audit(other)
    assert gave_up.target == EventKind.NOTIFY_GAVE_UP and "no secret" in json.loads(gave_up.reason)["error"]
    assert delivery_history([gave_up])[json.loads(gave_up.reason)["delivery_id"]].finished


# --- a real POST on loopback -------------------------------------------------------------------------------------

class _Receiver(BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.got.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_post_refuses_loopback_unless_allowed() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook?x=1"
    try:
        with pytest.raises(Refused, match="FABRIC_WEBHOOK_ALLOW_PRIVATE"):
            post(url, b"{}", {}, allow_private=False)
        with pytest.raises(Refused):
            post(f"http://localhost:{server.server_address[1]}/", b"{}", {}, allow_private=False)
        assert _Receiver.got == []
        assert post(url, b'{"a":1}', {"X-Fabric-Event": "success"}, allow_private=True, timeout=5) == 204
        (headers, body), = _Receiver.got
        assert body == b'{"a":1}' and headers["X-Fabric-Event"] == "success"
    finally:
        server.shutdown()
        server.server_close()
