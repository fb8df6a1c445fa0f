"""A fake Kubernetes API on loopback for tests: ray.io/v1 rayjobs and rayclusters, every POST validated
against KubeRay's CRD schema as a Strict API server would (no cloud API can exist here)."""

from __future__ import annotations

import copy
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class FakeKube(ThreadingHTTPServer):
    """ray.io/v1 rayjobs and rayclusters as the API server answers them: POST validates with the CRD schema."""

    daemon_threads = True
    plurals = {"rayjobs": "RayJob", "rayclusters": "RayCluster"}

    def __init__(self, check: Callable[[Any], list[str]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.check = check
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, dict[str, Any]]] = []  # (plural, type, object)
        self.cond = threading.Condition()
        self.closing = False
        self.queries: list[dict[str, list[str]]] = []
        self.on_create: Callable[[str, dict[str, Any]], None] | None = None
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up on a watch is no error
            super().handle_error(request, client_address)

    def record(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(len(self.events) + 1)
        self.events.append((plural, kind, copy.deepcopy(obj)))
        self.cond.notify_all()

    def set_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self.cond:
            obj = self.objects[(plural, namespace, name)]
            obj["status"] = status
            self.record(plural, "MODIFIED", obj)


def _status(code: int, reason: str, message: str, causes: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": {"causes": causes or []}, "code": code}


def _selected(obj: dict[str, Any], query: dict[str, list[str]]) -> bool:
    wanted = dict(p.split("=", 1) for s in query.get("fieldSelector", []) for p in s.split(",") if p)
    labels = dict(p.split("=", 1) for s in query.get("labelSelector", []) for p in s.split(",") if p)
    meta = obj["metadata"]
    return (wanted.get("metadata.name", meta["name"]) == meta["name"]
            and all((meta.get("labels") or {}).get(k) == v for k, v in labels.items()))


class _Handler(BaseHTTPRequestHandler):
    server: FakeKube
    protocol_version = "HTTP/1.1"  # chunked watch streams, as the API server sends them: each event arrives at once

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[str, str, str | None, dict[str, list[str]]] | None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts[:4] != ["apis", "ray.io", "v1", "namespaces"] or len(parts) not in (6, 7) \
                or parts[5] not in self.server.plurals:
            self._send(404, _status(404, "NotFound", f"the server could not find {url.path}"))
            return None
        query = parse_qs(url.query)
        self.server.queries.append(query)
        return parts[4], parts[5], parts[6] if len(parts) == 7 else None, query

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        if not (route := self._route()):
            return
        namespace, plural, _, query = route
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind, name = self.server.plurals[plural], body.get("metadata", {}).get("name", "")
        if query.get("fieldValidation") != ["Strict"]:
            return self._send(400, _status(400, "BadRequest", "this fake needs fieldValidation=Strict"))
        if body.get("kind") != kind or body["metadata"].get("namespace", namespace) != namespace:
            return self._send(400, _status(400, "BadRequest", "kind or namespace does not match the URL"))
        if errors := self.server.check(body):
            causes = [{"reason": "FieldValueInvalid", "field": e.split(":", 1)[0], "message": e} for e in errors]
            return self._send(422, _status(422, "Invalid", f'{kind}.ray.io "{name}" is invalid: '
                                           + "; ".join(errors), causes))
        with self.server.cond:
            if (plural, namespace, name) in self.server.objects:
                return self._send(409, _status(409, "AlreadyExists", f'{plural}.ray.io "{name}" already exists'))
            obj = copy.deepcopy(body)
            obj["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), generation=1,
                                   creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self.server.objects[(plural, namespace, name)] = obj
            self.server.record(plural, "ADDED", obj)
        self._send(201, obj)
        if self.server.on_create:
            self.server.on_create(plural, obj)

    def do_GET(self) -> None:  # noqa: N802
        if not (route := self._route()):
            return
        namespace, plural, name, query = route
        with self.server.cond:
            if name is not None:
                obj = self.server.objects.get((plural, namespace, name))
                return self._send(200, obj) if obj else self._send(
                    404, _status(404, "NotFound", f'{plural}.ray.io "{name}" not found'))
            items = [copy.deepcopy(o) for (p, ns, _), o in self.server.objects.items()
                     if p == plural and ns == namespace and _selected(o, query)]
            seen = len(self.server.events)
        if query.get("watch") != ["true"]:
            return self._send(200, {"apiVersion": "ray.io/v1", "kind": self.server.plurals[plural] + "List",
                                    "metadata": {"resourceVersion": str(seen)}, "items": items})
        # A watch: the current objects as ADDED, then each later change, until timeoutSeconds (at most 10 s here).
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        lines = [{"type": "ADDED", "object": o} for o in items]
        deadline = time.monotonic() + min(10.0, float(query.get("timeoutSeconds", ["10"])[0]))
        while True:
            for event in lines:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            with self.server.cond:
                while len(self.server.events) == seen and not self.server.closing \
                        and (left := deadline - time.monotonic()) > 0:
                    self.server.cond.wait(left)
                if self.server.closing or time.monotonic() >= deadline:
                    self.wfile.write(b"0\r\n\r\n")
                    return
                lines = [{"type": t, "object": o} for p, t, o in self.server.events[seen:]
                         if p == plural and o["metadata"]["namespace"] == namespace and _selected(o, query)]
                seen = len(self.server.events)

    def do_DELETE(self) -> None:  # noqa: N802
        if not (route := self._route()):
            return
        namespace, plural, name, _ = route
        with self.server.cond:
            obj = self.server.objects.pop((plural, namespace, name or ""), None)
            if obj is None:
                return self._send(404, _status(404, "NotFound", f'{plural}.ray.io "{name}" not found'))
            self.server.record(plural, "DELETED", obj)
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}})
