"""The same Client and Submission API over the gateway's HTTP routes: `fb.connect("http://host:8000", token=...)`.

For notebooks and CLIs that reach the fabric only through its gateway (no Ray on this side). Standard
library only; the gateway's problem+json answers come back as the same FabricError subclasses that the
in-cluster client raises.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fabric.errors import ConflictError, ErrorCode, FabricError, NodeFailedError, NotFoundError, Problem, SpecError
from fabric.record import SubmissionStatus
from fabric.retry import backoff
from fabric.spec import DagSpec, RuntimeParams, read_spec
from fabric.types import new_submission_id

RETRY_FOR_S = 60.0  # a gateway or registry restarting answers 503 / refuses connections for a while

_ERROR_CLASS: dict[int, type[FabricError]] = {404: NotFoundError, 409: ConflictError, 422: SpecError}


class HttpSubmission:
    """A handle on one submission, through the gateway. Every method is one HTTP request."""

    def __init__(self, client: HttpClient, submission_id: str, created: bool = True) -> None:
        self._client = client
        self.id = submission_id
        self.created = created

    def __repr__(self) -> str:
        return f"HttpSubmission({self.id!r})"

    def status(self) -> SubmissionStatus:
        return SubmissionStatus.from_dict(self._client._request("GET", f"/api/orch/status/{self._quoted}"))

    def wait(self, timeout: float | None = None, poll_s: float = 0.5) -> SubmissionStatus:
        """Poll until the submission ends; raise FabricError(TIMEOUT) if `timeout` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if status.done:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise FabricError(f"submission {self.id} did not finish within {timeout}s", code=ErrorCode.TIMEOUT,
                                  where=self.id, fix="wait longer, or check `fabric status` for a stuck node")
            time.sleep(poll_s if deadline is None else max(min(poll_s, deadline - time.monotonic()), 0.0))

    def logs(self, node: str, tail: int | None = None) -> str:
        query = {"node": node, **({"tail": str(tail)} if tail else {})}
        return self._client._request("GET", f"/api/orch/logs/{self._quoted}", query=query)["text"]

    def cancel(self) -> None:
        self._client._request("POST", f"/api/orch/cancel/{self._quoted}")

    def graph(self) -> dict[str, Any]:
        return self._client._request("GET", f"/api/orch/graph/{self._quoted}")

    def lineage(self) -> list[dict[str, Any]]:
        return self._client._request("GET", f"/api/orch/lineage/{self._quoted}")["events"]

    def result(self, node: str, out: str | None = None, timeout: float | None = None) -> Any:
        raise FabricError(
            "results live in the cluster's object store and do not travel over HTTP",
            code=ErrorCode.NOT_FOUND, where=f"{self.id}.{node}",
            fix="have the node write what you need to its artifact dir (fabric.context().artifact_dir), or "
                "connect with Ray (fb.connect('auto')) from inside the cluster")

    @property
    def _quoted(self) -> str:
        return urllib.parse.quote(self.id, safe="")


class HttpClient:
    """Submit DAGs through the gateway and follow them; the team comes from the token."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"HttpClient({self.url!r})"

    def submit(self, spec: DagSpec | Mapping[str, Any] | str | Path | Any,
               runtime_params: RuntimeParams | Mapping[str, Any] | None = None) -> HttpSubmission:
        if hasattr(spec, "to_spec"):  # an fb.DAG
            if spec.inline_code():
                raise FabricError(
                    "this DAG's functions are defined in the notebook; their code cannot be sent over HTTP",
                    code=ErrorCode.SPEC_FIELD, where="entrypoint",
                    fix="put the functions in a module the cluster has (an image, or runtime_env working_dir / "
                        "py_modules), or connect with Ray (fb.connect('auto'))")
            spec = spec.to_spec()
        if isinstance(runtime_params, RuntimeParams):
            runtime_params = runtime_params.model_dump(mode="json", exclude_none=True)
        params = dict(runtime_params or {})
        # Always an idempotency key: a submit retried after a dropped connection starts one run.
        params.setdefault("submission_id", new_submission_id())
        reply = self._request("POST", "/api/orch/submit", body={"dag_spec": read_spec(spec), "runtime_params": params})
        return HttpSubmission(self, reply["submission_id"], reply.get("created", True))

    def get(self, submission_id: str, *, check: bool = True) -> HttpSubmission:
        submission = HttpSubmission(self, submission_id, created=False)
        if check:
            submission.status()  # NotFoundError if unknown (or another team's)
        return submission

    def list(self, state: str | None = None, limit: int = 50, labels: dict[str, str] | None = None,
             before: float | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"limit": str(limit)}
        if state:
            query["state"] = state
        if before is not None:
            query["cursor"] = repr(before)
        if labels:
            query["label"] = [f"{k}:{v}" for k, v in labels.items()]
        return self._request("GET", "/api/orch/submissions", query=query)["items"]

    def kill_switch(self, on: bool | None = None, reason: str = "") -> dict[str, Any]:
        if on is None:
            raise FabricError("reading the kill-switch over HTTP is not a route", code=ErrorCode.SPEC_FIELD,
                              where="on", fix="pass on=True or on=False")
        return self._request("POST", "/api/orch/admin/kill-switch", body={"on": on, "reason": reason})

    def drain(self, timeout: float = 600.0) -> dict[str, Any]:
        return self._request("POST", "/api/orch/admin/drain", body={"timeout_s": timeout}, timeout_s=timeout + 60)

    def workers(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/orch/workers")["workers"]

    def queues(self) -> dict[str, Any]:
        return {**self._request("GET", "/api/orch/queues"), **self._request("GET", "/api/orch/quotas")}

    def ping(self) -> bool:
        try:
            return self._request("GET", "/healthz", retry=False).get("registry") == "ok"
        except FabricError:
            return False

    def run(self, spec: Any, runtime_params: Any = None, timeout: float | None = None) -> SubmissionStatus:
        return self.submit(spec, runtime_params).wait(timeout)

    # -- transport ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                 query: dict[str, Any] | None = None, retry: bool = True, timeout_s: float | None = None) -> Any:
        """One JSON request; retried with backoff on 503, Serve's bare 5xx and refused connections (every
        route is safe to repeat: reads are reads, submits carry an idempotency key, cancel is idempotent)."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        delays = backoff(RETRY_FOR_S if retry else 0.0, first=0.2)
        while True:
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=timeout_s or self._timeout_s) as response:
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as exc:
                payload = exc.read()
                outage = ((exc.code == 503 and _retryable(payload))
                          or (exc.code in (500, 502, 504) and _from_proxy(payload)))
                delay = next(delays, None) if outage else None
                if delay is None:
                    raise _error(exc.code, payload, url) from None
                time.sleep(delay)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                delay = next(delays, None)
                if delay is None:
                    raise FabricError(f"cannot reach the gateway at {self.url}: {getattr(exc, 'reason', exc)}",
                                      code=ErrorCode.GATEWAY_UNREACHABLE, where=self.url,
                                      fix="check the URL and that `fabric up` (or the RayService) is running"
                                      ) from None
                time.sleep(delay)


def _from_proxy(payload: bytes) -> bool:
    """Serve's proxy answers a bare 500/502/504 when the replica serving the request died; the gateway itself
    always answers problem+json with a code. Repeating is safe (see `_request`), so the proxy's is retried."""
    try:
        return not (isinstance(data := json.loads(payload), dict) and "code" in data)
    except ValueError:
        return True


def _retryable(payload: bytes) -> bool:
    """A 503 from a closed admission (kill-switch, drain) is an answer, not an outage: do not retry it."""
    try:
        return json.loads(payload).get("code") != str(ErrorCode.ADMISSION_CLOSED)
    except (ValueError, AttributeError):
        return True


def _error(status: int, payload: bytes, url: str) -> FabricError:
    """The gateway's problem+json as the FabricError it was on the server."""
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "code" not in data:
        return FabricError(f"HTTP {status} from {url}: {payload[:500].decode(errors='replace')}",
                           code=ErrorCode.UNAUTHORIZED if status == 401 else ErrorCode.GATEWAY_UNREACHABLE, where=url)
    code = _code(data["code"])
    problems = tuple(Problem(_code(p.get("code", "")), p.get("where", ""), p.get("message", ""), p.get("fix", ""))
                     for p in data.get("problems") or [])
    cls = _ERROR_CLASS.get(status, FabricError)
    if code in (ErrorCode.NODE_FAILED, ErrorCode.NOT_FINISHED):
        cls = NodeFailedError
    return cls(data.get("title", ""), code=code, where=data.get("where", ""), fix=data.get("fix", ""),
               problems=problems)


def _code(value: str) -> ErrorCode:
    try:
        return ErrorCode(value)
    except ValueError:
        return ErrorCode.SPEC_INVALID


__all__ = ["HttpClient", "HttpSubmission"]
