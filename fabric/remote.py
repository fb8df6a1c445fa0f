"""The client protocol over the gateway's HTTP routes: `fb.connect("http://host:8000", token=...)`.

For notebooks and CLIs that reach the fabric only through its gateway (no Ray on this side). One
`httpx.Client` per `HttpClient`, so requests reuse their connections. The gateway's problem+json
answers come back as the same FabricError subclasses that the Ray client raises.

Retries: every route is safe to repeat (reads are reads, a submit always carries its idempotency key,
cancel and the kill-switch are idempotent), so a request is repeated, with jittered backoff for up to
`retry_for` seconds, when it did not reach fabric or fabric could not answer: a refused or dropped
connection, a 502, 503 or 504, and the bare 500 of Ray Serve's proxy whose replica died. fabric's own
answers are application/problem+json and are final, a 500 included; so is a 503 `ADMISSION_CLOSED`
(the kill-switch is on: an answer, not an outage). A 429 (the team is over its rate) is tried again after
its Retry-After, within the same `retry_for`.
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from fabric.errors import ConflictError, ErrorCode, FabricError, NodeFailedError, NotFoundError, Problem, SpecError
from fabric.protocol import (
    Page,
    ParamsInput,
    Rows,
    SpecInput,
    Submission,
    backfill_request,
    pipeline_run_params,
    registrable_spec,
)
from fabric.record import SubmissionStatus
from fabric.retry import REGISTRY_RESTART_WAIT_S, backoff
from fabric.spec import RuntimeParams, read_spec
from fabric.types import new_submission_id

RETRY_FOR_S = REGISTRY_RESTART_WAIT_S  # a gateway or registry restarting answers 503 / refuses connections a while
FIRST_DELAY_S = 0.2
LONGEST_DELAY_S = 2.0
JITTER = 0.5  # each delay is cut by up to half, at random: clients cut off together do not return together
PROBLEM_JSON = "application/problem+json"
# A request that may not have reached fabric: repeat it. (A read timeout is not here: the gateway got the
# request and is working on it; repeating would only pile more work on it.)
RETRIED_ERRORS = (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ConnectTimeout, httpx.PoolTimeout)

_ERROR_CLASS: dict[int, type[FabricError]] = {404: NotFoundError, 409: ConflictError, 422: SpecError}


class HttpSubmission:
    """A `Submission` through the gateway. Every method is one HTTP request."""

    def __init__(self, client: HttpClient, submission_id: str, created: bool = True) -> None:
        self._client = client
        self.id = submission_id
        self.created = created

    def __repr__(self) -> str:
        return f"HttpSubmission({self.id!r})"

    def status(self) -> SubmissionStatus:
        return SubmissionStatus.from_dict(self._client._json("GET", f"/api/orch/status/{self._quoted}"))

    def wait(self, timeout: float | None = None) -> SubmissionStatus:
        """Poll (every `poll_s` of the client) until the submission ends; FabricError(TIMEOUT) if `timeout`
        passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poll_s = self._client.poll_s
        while True:
            status = self.status()
            if status.done:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise FabricError(f"submission {self.id} did not finish within {timeout}s", code=ErrorCode.TIMEOUT,
                                  where=self.id, fix="wait longer, or check `fabric status` for a stuck node")
            time.sleep(poll_s if deadline is None else max(min(poll_s, deadline - time.monotonic()), 0.0))

    def result(self, node: str, out: str | None = None, timeout: float | None = None) -> Any:
        raise FabricError(
            "results live in the cluster's object store and do not travel over HTTP",
            code=ErrorCode.NOT_FOUND, where=f"{self.id}.{node}",
            fix="have the node write what you need to its artifact dir (fabric.context().artifact_dir), or "
                "connect with Ray (fb.connect('auto')) from inside the cluster")

    def logs(self, node: str, tail: int | None = None) -> str:
        query = {"node": node, **({"tail": str(tail)} if tail is not None else {})}
        return self._client._json("GET", f"/api/orch/logs/{self._quoted}", query=query)["text"]

    def artifacts(self) -> dict[str, Any]:
        return self._client.artifacts(self.id)

    def cancel(self) -> None:
        self._client._json("POST", f"/api/orch/cancel/{self._quoted}")

    def graph(self) -> dict[str, Any]:
        return self._client._json("GET", f"/api/orch/graph/{self._quoted}")

    def lineage(self) -> list[dict[str, Any]]:
        return self._client._json("GET", f"/api/orch/lineage/{self._quoted}")["events"]

    @property
    def _quoted(self) -> str:
        return _quote(self.id)


class HttpClient:
    """A `Client` through the gateway; the team comes from the token. Close it (or use `with`) to free its
    connections."""

    def __init__(self, url: str, token: str | None, *, retry_for: float = RETRY_FOR_S, timeout_s: float = 60.0,
                 poll_s: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.poll_s = poll_s
        self._retry_for = retry_for
        headers = {"Accept": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __repr__(self) -> str:
        return f"HttpClient({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def submit(self, spec: SpecInput, runtime_params: ParamsInput = None) -> Submission:
        if hasattr(spec, "to_spec"):  # an fb.DAG
            dag: Any = spec
            if dag.inline_code():
                raise FabricError(
                    "this DAG's functions are defined in the notebook; their code cannot be sent over HTTP",
                    code=ErrorCode.SPEC_FIELD, where="entrypoint",
                    fix="put the functions in a module the cluster has (an image, or runtime_env working_dir / "
                        "py_modules), or connect with Ray (fb.connect('auto'))")
            spec = dag.to_spec()
        if isinstance(runtime_params, RuntimeParams):
            runtime_params = runtime_params.model_dump(mode="json", exclude_none=True)
        params = dict(runtime_params or {})
        # Always an idempotency key, made once: every retry of this submit sends the same one.
        params.setdefault("submission_id", new_submission_id())
        reply = self._json("POST", "/api/orch/submit", body={"dag_spec": read_spec(spec), "runtime_params": params})
        return HttpSubmission(self, reply["submission_id"], reply.get("created", True))

    def get(self, submission_id: str, *, check: bool = True) -> Submission:
        submission = HttpSubmission(self, submission_id, created=False)
        if check:
            submission.status()  # NotFoundError if unknown (or another team's)
        return submission

    def list(self, state: str | None = None, limit: int = 50, labels: Mapping[str, str] | None = None, *,
             search: str | None = None, cursor: str | None = None) -> Page:
        query: dict[str, Any] = {"limit": str(limit)}
        for key, value in (("state", state), ("search", search), ("cursor", cursor)):
            if value is not None:
                query[key] = value
        if labels:
            query["label"] = [f"{k}:{v}" for k, v in labels.items()]
        body = self._json("GET", "/api/orch/submissions", query=query)
        return Page(body["items"], body.get("next_cursor"))

    def run(self, spec: SpecInput, runtime_params: ParamsInput = None,
            timeout: float | None = None) -> SubmissionStatus:
        return self.submit(spec, runtime_params).wait(timeout)

    def artifacts(self, submission_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/orch/artifacts/{_quote(submission_id)}")

    def artifact(self, submission_id: str, node: str | None, name: str) -> bytes:
        path = (f"/api/orch/artifacts/{_quote(submission_id)}/metrics.json" if node is None else
                f"/api/orch/artifacts/{_quote(submission_id)}/{_quote(node)}/{urllib.parse.quote(name)}")
        return self._send("GET", path).content

    def kill_switch(self, on: bool | None = None, reason: str = "", actor: str = "") -> dict[str, Any]:
        if on is None:
            return self._json("GET", "/api/orch/admin/kill-switch")
        return self._json("POST", "/api/orch/admin/kill-switch", body={"on": on, "reason": reason, "actor": actor})

    def drain(self, timeout: float = 600.0, actor: str = "") -> dict[str, Any]:
        return self._json("POST", "/api/orch/admin/drain", body={"timeout_s": timeout, "actor": actor},
                          timeout_s=timeout + 60)

    def workers(self) -> Rows:
        return self._json("GET", "/api/orch/workers")["workers"]

    def queues(self) -> dict[str, Any]:
        return {**self._json("GET", "/api/orch/queues"), **self._json("GET", "/api/orch/quotas")}

    def metrics_text(self) -> str:
        return self._send("GET", "/metrics").text

    def register(self, spec: SpecInput, max_active_runs: int | None = None, overlap: str = "skip") -> dict[str, Any]:
        return self._json("POST", "/api/orch/pipelines", body={
            "dag_spec": registrable_spec(spec), "max_active_runs": max_active_runs, "overlap": overlap})

    def pipelines(self) -> Rows:
        return self._json("GET", "/api/orch/pipelines")["items"]

    def pipeline_versions(self, pipeline_id: str) -> Rows:
        return self._json("GET", f"/api/orch/pipelines/{_quote(pipeline_id)}/versions")["items"]

    def pipeline_runs(self, pipeline_id: str, limit: int = 20) -> Rows:
        return self._json("GET", f"/api/orch/pipelines/{_quote(pipeline_id)}/runs",
                          query={"limit": str(limit)})["items"]

    def run_pipeline(self, pipeline_id: str, params: Mapping[str, Any] | None = None, *, version: int | None = None,
                     runtime_params: ParamsInput = None) -> dict[str, Any]:
        return self._json("POST", f"/api/orch/pipelines/{_quote(pipeline_id)}/runs", body={
            "version": version, "runtime_params": pipeline_run_params(params, runtime_params)})

    def rerun(self, submission_id: str, from_node: str | None = None) -> Submission:
        reply = self._json("POST", f"/api/orch/rerun/{_quote(submission_id)}",
                           body={"from_node": from_node, "submission_id": new_submission_id()})
        return HttpSubmission(self, reply["submission_id"], reply.get("created", True))

    def schedule(self, pipeline_id: str, schedule: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("POST", f"/api/orch/pipelines/{_quote(pipeline_id)}/schedules", body=dict(schedule))

    def schedules(self, pipeline_id: str | None = None) -> Rows:
        path = "/api/orch/schedules" if pipeline_id is None else f"/api/orch/pipelines/{_quote(pipeline_id)}/schedules"
        return self._json("GET", path)["items"]

    def pause_schedule(self, pipeline_id: str, name: str, paused: bool = True) -> dict[str, Any]:
        action = "pause" if paused else "resume"
        return self._json("POST", f"/api/orch/pipelines/{_quote(pipeline_id)}/schedules/{_quote(name)}/{action}")

    def trigger(self, pipeline_id: str, key: str, params: Mapping[str, Any] | None = None, *,
                version: int | None = None) -> dict[str, Any]:
        return self._json("POST", f"/api/orch/pipelines/{_quote(pipeline_id)}/trigger",
                          body={"params": dict(params or {}), "version": version}, headers={"Idempotency-Key": key})

    def backfill(self, pipeline_id: str, start: str | dt.date, end: str | dt.date, *, step: str = "1d",
                 params: Mapping[str, Any] | None = None, date_param: str = "as_of", max_active: int = 4,
                 version: int | None = None, backfill_id: str | None = None) -> dict[str, Any]:
        return self._json("POST", f"/api/orch/pipelines/{_quote(pipeline_id)}/backfills", body=backfill_request(
            start, end, step, params, date_param, max_active, version, backfill_id))

    def backfill_status(self, backfill_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/orch/backfills/{_quote(backfill_id)}")

    def backfills(self, pipeline_id: str | None = None) -> Rows:
        return self._json("GET", "/api/orch/backfills", query={"pipeline_id": pipeline_id} if pipeline_id else None)[
            "items"]

    def cancel_backfill(self, backfill_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/orch/backfills/{_quote(backfill_id)}/cancel")

    def ping(self) -> bool:
        try:
            return self._json("GET", "/healthz", retry=False).get("registry") == "ok"
        except FabricError:
            return False

    # -- transport ------------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    def _send(self, method: str, path: str, *, body: dict[str, Any] | None = None, query: dict[str, Any] | None = None,
              retry: bool = True, timeout_s: float | None = None,
              headers: dict[str, str] | None = None) -> httpx.Response:
        """One request, repeated (with the same body, so the same idempotency key) while fabric is not
        there to answer; fabric's own errors raised as FabricError."""
        delays = backoff(self._retry_for if retry else 0.0, first=FIRST_DELAY_S, longest=LONGEST_DELAY_S,
                         jitter=JITTER)
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        while True:
            try:
                response = self._http.request(method, path, json=body, params=query, timeout=timeout,
                                              headers=headers)
            except RETRIED_ERRORS as exc:
                delay = next(delays, None)
                if delay is None:
                    raise FabricError(f"cannot reach the gateway at {self.url}: {exc or type(exc).__name__}",
                                      code=ErrorCode.GATEWAY_UNREACHABLE, where=self.url,
                                      fix="check the URL and that `fabric up` (or the RayService) is running"
                                      ) from None
            except httpx.TimeoutException as exc:
                raise FabricError(f"the gateway at {self.url} did not answer {method} {path} in time ({exc})",
                                  code=ErrorCode.TIMEOUT, where=self.url,
                                  fix="retry later, or raise timeout_s; `fabric status` shows what runs") from None
            else:
                if response.is_success:
                    return response
                delay = next(delays, None) if should_retry(response) else None
                if delay is not None and response.status_code == 429:
                    delay = max(delay, _retry_after(response))
                if delay is None:
                    raise _error(response)
            time.sleep(delay)


def should_retry(response: httpx.Response) -> bool:
    """Whether an error answer came from something in front of fabric (Serve's proxy, a load balancer) or
    from fabric saying it is briefly away, rather than being fabric's final answer."""
    problem = response.headers.get("content-type", "").split(";")[0].strip() == PROBLEM_JSON
    if response.status_code == 503:
        return not (problem and _problem_code(response) == str(ErrorCode.ADMISSION_CLOSED))
    return response.status_code == 429 or (response.status_code in (500, 502, 504) and not problem)


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", "1")), 60.0)
    except ValueError:
        return 1.0


def _problem_code(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data.get("code") if isinstance(data, dict) else None


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _error(response: httpx.Response) -> FabricError:
    """The gateway's problem+json as the FabricError it was on the server."""
    status, url = response.status_code, str(response.request.url)
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or "code" not in data:
        return FabricError(f"HTTP {status} from {url}: {response.content[:500].decode(errors='replace')}",
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


__all__ = ["HttpClient", "HttpSubmission", "should_retry"]
