"""The HTTP client against a real HTTP server on loopback that answers scripted statuses: what it repeats
(refused or dropped connections, 502/503/504, Serve's bare 500), what it never repeats (fabric's own
problem+json answers), that a repeated submit keeps its idempotency key, jitter, and connection reuse."""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fabric.errors import ErrorCode, FabricError, NotFoundError
from fabric.remote import FIRST_DELAY_S, JITTER, HttpClient
from fabric.retry import backoff

pytestmark = pytest.mark.timeout(60)

OK = (200, "application/json", {"items": [], "next_cursor": None})
ACCEPTED = (202, "application/json", {"submission_id": "s-1", "created": True})


def problem(status: int, code: str) -> tuple[int, str, dict[str, Any]]:
    return status, "application/problem+json", {"code": code, "title": f"fabric says {code}", "where": "x",
                                                "fix": "y", "problems": []}


def bare(status: int) -> tuple[int, str, str]:
    return status, "text/plain; charset=utf-8", "Internal Server Error"  # what Serve's proxy sends


DROP = (0, "", "")  # close the connection without answering


class Scripted(ThreadingHTTPServer):
    """Answers each request with the next scripted reply (the last one repeats) and records it."""

    daemon_threads = True

    def __init__(self, replies: list[tuple[int, str, Any]], port: int = 0) -> None:
        self.replies = list(replies)
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), Handler)

    def next_reply(self) -> tuple[int, str, Any]:
        with self.lock:
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client that reuses its connection shows one port
    server: Scripted

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.seen.append({"method": self.command, "path": self.path, "body": body, "at": time.monotonic(),
                                 "port": self.client_address[1]})
        status, media, payload = self.server.next_reply()
        if status == 0:
            self.close_connection = True
            return
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *_: Any) -> None:
        pass


def serve(server: Scripted) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[Scripted] = []

    def start(*replies: tuple[int, str, Any], retry_for: float = 5.0) -> tuple[Scripted, HttpClient]:
        server = Scripted(list(replies))
        servers.append(server)
        serve(server)
        return server, HttpClient(f"http://127.0.0.1:{server.server_address[1]}", "tok", retry_for=retry_for)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("outage", [bare(500), bare(502), bare(503), bare(504), DROP,
                                    problem(503, "REGISTRY_UNAVAILABLE")])
def test_an_outage_is_repeated_until_fabric_answers(scripted: Any, outage: tuple) -> None:
    server, client = scripted(outage, outage, OK)
    assert client.list() == [] and len(server.seen) == 3
    assert {s["path"] for s in server.seen} == {"/api/orch/submissions?limit=50"}


@pytest.mark.parametrize(("answer", "status"), [(problem(500, "INTERNAL"), 500), (problem(502, "SPEC_INVALID"), 502),
                                                (problem(504, "TIMEOUT"), 504), (problem(503, "ADMISSION_CLOSED"), 503),
                                                (problem(404, "NOT_FOUND"), 404), (bare(400), 400)])
def test_fabrics_own_answer_is_final_a_500_included(scripted: Any, answer: tuple, status: int) -> None:
    server, client = scripted(answer, OK)
    with pytest.raises(FabricError) as caught:
        client.list()
    assert len(server.seen) == 1  # never repeated
    if answer[1] == "application/problem+json":
        assert caught.value.code == ErrorCode(answer[2]["code"]) and caught.value.message.startswith("fabric says")
    assert isinstance(caught.value, NotFoundError) == (status == 404)


def test_a_repeated_submit_keeps_its_idempotency_key(scripted: Any) -> None:
    server, client = scripted(bare(502), DROP, bare(500), problem(503, "STORE_UNAVAILABLE"), ACCEPTED)
    submission = client.submit({"version": 1, "pipeline_id": "p", "nodes": [{"id": "a", "kind": "python_task"}]})
    assert submission.id == "s-1" and len(server.seen) == 5
    keys = {s["body"]["runtime_params"]["submission_id"] for s in server.seen}
    assert len(keys) == 1 and keys != {None}


def test_a_refused_connection_is_repeated_until_the_gateway_is_up() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = HttpClient(f"http://127.0.0.1:{port}", None, retry_for=10.0)
    server = Scripted([OK], port)  # bound now (the port is taken), listening only once serve() runs
    started = time.monotonic()
    server.socket.close()  # refuse until the "restart" below
    later = threading.Timer(0.8, lambda: (setattr(server, "socket", _listen(port)), serve(server)))
    later.start()
    try:
        assert client.list() == []
        assert time.monotonic() - started >= 0.7 and len(server.seen) == 1
    finally:
        later.join()
        server.shutdown()
        server.server_close()


def _listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    return sock


def test_a_long_outage_gives_up_after_retry_for_with_a_clear_error(scripted: Any) -> None:
    server, client = scripted(bare(503), retry_for=1.5)
    started = time.monotonic()
    with pytest.raises(FabricError) as caught:
        client.list()
    elapsed = time.monotonic() - started
    assert 1.5 * (1 - JITTER) <= elapsed <= 2.5 and 3 <= len(server.seen) <= 12
    assert caught.value.code is ErrorCode.GATEWAY_UNREACHABLE and "503" in caught.value.message
    gaps = [b["at"] - a["at"] for a, b in zip(server.seen, server.seen[1:], strict=False)]
    # The first wait is FIRST_DELAY_S cut by up to JITTER; every later one is at most twice the one before.
    assert FIRST_DELAY_S * (1 - JITTER) - 0.02 <= gaps[0] <= FIRST_DELAY_S + 0.1, gaps


def test_jitter_is_bounded_and_real() -> None:
    # The schedule runs on the clock (no time passes here), so take a fixed number of delays.
    plain = list(itertools.islice(backoff(30.0, first=0.2, longest=2.0), 12))
    jittered = list(itertools.islice(backoff(30.0, first=0.2, longest=2.0, jitter=0.5, rng=random.Random(7)), 12))
    assert len(plain) == len(jittered) == 12
    for nominal, delay in zip(plain, jittered, strict=False):
        assert nominal * 0.5 <= delay <= nominal
    assert len({round(d / n, 6) for n, d in zip(plain, jittered, strict=False)}) > 3  # not a fixed factor
    with pytest.raises(ValueError):
        next(backoff(1.0, jitter=1.5))


def test_one_client_reuses_one_connection(scripted: Any) -> None:
    server, client = scripted(OK)
    for _ in range(5):
        client.list()
    assert len(server.seen) == 5 and len({s["port"] for s in server.seen}) == 1
    client.close()
    assert all(s["path"].startswith("/api/orch/submissions") for s in server.seen)


def test_every_request_carries_the_token_and_the_list_query(scripted: Any) -> None:
    server, client = scripted((200, "application/json", {"items": [{"submission_id": "a"}], "next_cursor": "Q"}))
    page = client.list("RUNNING", 1, {"k": "v"}, search="pipe", cursor="abc")
    assert page == [{"submission_id": "a"}] and page.next_cursor == "Q"
    path = server.seen[0]["path"]
    for part in ("limit=1", "state=RUNNING", "search=pipe", "cursor=abc", "label=k%3Av"):
        assert part in path


def test_a_429_is_tried_again_after_its_retry_after(scripted: Any) -> None:
    server, client = scripted(problem(429, "RATE_LIMITED"), OK)
    assert client.list() == [] and len(server.seen) == 2
    assert server.seen[1]["at"] - server.seen[0]["at"] >= 0.95  # no Retry-After header: a second


def test_a_429_past_retry_for_is_the_answer(scripted: Any) -> None:
    server, client = scripted(problem(429, "RATE_LIMITED"), retry_for=0.0)
    with pytest.raises(FabricError) as caught:
        client.list()
    assert caught.value.code == ErrorCode.RATE_LIMITED and len(server.seen) == 1
