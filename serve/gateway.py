"""The gateway: `/api/orch/*` over a team-scoped fabric Client, errors as application/problem+json.

Stateless: every request asks the registry actor. Run it with `serve run serve.gateway:app` (defaults
from the environment), `serve run serve.gateway:build_app tokens_file=... num_replicas=2`, or
`serve deploy serve/config.yaml`. The hot routes (submit, status) await the registry on the event loop;
the rest are plain functions that Serve runs in its thread pool.
"""

# No `from __future__ import annotations` here: FastAPI must see real types on Serve's wrapped methods.
import logging
import urllib.parse
from typing import Annotated, Any, cast

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

import fabric as fb
from fabric.actors import HEAD_RESOURCE
from fabric.client import RayClient, RaySubmission
from fabric.errors import ErrorCode, FabricError
from fabric.execute.sealed import require_sealed, sealing_runtime_env
from fabric.logs import configure_logging
from fabric.settings import settings
from fabric.spec import read_document
from serve.auth import Principal, TokenTable
from serve.gateway_metrics import GatewayMetrics
from serve.guard import Guard, GuardState, Limits, Tokens
from serve.llm_routes import LlmRoutes
from serve.llm_routes import router as llm_router
from serve.ml_routes import MlRoutes
from serve.ml_routes import router as ml_router
from serve.observe_api import router as observe_router
from serve.openapi import document_problems, problem
from serve.pipeline_routes import PipelineRoutes
from serve.pipeline_routes import router as pipeline_router

MAX_LABEL_FILTERS = 16
# While the registry restarts, a request waits this long for it, then answers 503 with Retry-After.
REGISTRY_WAIT_S = 5.0

STATUS_BY_CODE = {
    ErrorCode.UNAUTHORIZED: 401, ErrorCode.FORBIDDEN: 403, ErrorCode.POLICY_DENIED: 403, ErrorCode.NOT_FOUND: 404,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409, ErrorCode.NOT_FINISHED: 409, ErrorCode.NODE_FAILED: 409,
    ErrorCode.TOO_LARGE: 413, ErrorCode.STORE_UNAVAILABLE: 503, ErrorCode.ADMISSION_CLOSED: 503,
    ErrorCode.REGISTRY_UNAVAILABLE: 503, ErrorCode.SETTINGS_INVALID: 503,
    ErrorCode.TIMEOUT: 504,
}


class SubmitBody(BaseModel):
    """`POST /api/orch/submit`: the DAG (an object, or YAML/JSON text) and its runtime params."""

    model_config = ConfigDict(extra="forbid")
    dag_spec: dict[str, Any] | str
    runtime_params: dict[str, Any] = Field(default_factory=dict)
    refs: dict[str, Any] = Field(default_factory=dict, description="data refs: not supported in this build")


class RegisterBody(BaseModel):
    """`POST /api/orch/pipelines`: the spec to register as a new version, and how runs by name overlap."""

    model_config = ConfigDict(extra="forbid")
    dag_spec: dict[str, Any] | str
    max_active_runs: int | None = None  # validated by the registry (a 422 naming the field)
    overlap: str = "skip"


class RunBody(BaseModel):
    """`POST /api/orch/pipelines/{id}/runs`: which version (default the latest) and the runtime params."""

    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(None, ge=1)
    params: dict[str, Any] = Field(default_factory=dict, description="the pipeline's params")
    runtime_params: dict[str, Any] = Field(default_factory=dict)


class RerunBody(BaseModel):
    """`POST /api/orch/rerun/{id}`: the node to re-run from (default: what did not succeed), and the new id."""

    model_config = ConfigDict(extra="forbid")
    from_node: str | None = None
    submission_id: str | None = Field(None, description="the re-run's idempotency key (made when absent)")


class KillSwitchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool
    reason: str = Field("", max_length=500)
    actor: str = Field("", max_length=100, description="who, recorded beside the token's team")


class DrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_s: float = Field(600.0, ge=0, le=86_400)
    actor: str = Field("", max_length=100, description="who, recorded beside the token's team")


# Helpers the Gateway class calls are defined above it: Serve pickles the class where it is declared.
def _actor(team: str, actor: str) -> str:
    """Who is recorded for an admin action: the token's team, and the name the caller gave, if any."""
    return f"{team}/{actor}" if actor else team


def _status_url(request: Request, submission_id: str) -> str:
    """The `Location` of a 202: the submission's status route, under the app's route prefix."""
    root = request.scope.get("root_path", "").rstrip("/")
    return f"{root}/api/orch/status/{urllib.parse.quote(submission_id, safe=':')}"  # a team's id: `team:key`


api = FastAPI(title="fabric gateway", version="1",
              description="Submit DAGs, follow them, cancel them. Every /api route needs a bearer token.")
# This replica's own series (serve/gateway_metrics.py), reached through the app: Serve ships the Gateway class by
# value, so a module global read by the class and by the middleware function would be two objects in a replica.
api.state.gateway_metrics = GatewayMetrics()
api.include_router(ml_router)  # /api/predict/{name}, /api/orch/artifacts/... (serve/ml_routes.py)
api.include_router(llm_router)  # /v1/completions, /v1/chat/completions (serve/llm_routes.py)
api.include_router(pipeline_router)  # triggers and backfills (serve/pipeline_routes.py)
api.include_router(observe_router)  # the DAG view, lineage and the web UI at /ui (serve/observe_api.py)
document_problems(api)  # every route's error answers in /openapi.json (serve/openapi.py)
# Before FastAPI reads a byte: the token, the team's rate, the query and the streamed body's size (serve/guard.py).
# Added before the metrics middleware below, so that one wraps it and counts its 401/413/429 answers too.
GUARD = GuardState()
api.add_middleware(Guard, state=GUARD)


@api.exception_handler(FabricError)
async def _fabric_error(_: Request, error: FabricError) -> JSONResponse:
    return problem(STATUS_BY_CODE.get(error.code, 422), error)


@api.exception_handler(ActorUnavailableError)
@api.exception_handler(ActorDiedError)
@api.exception_handler(GetTimeoutError)
@api.exception_handler(TimeoutError)
async def _registry_unavailable(_: Request, error: Exception) -> JSONResponse:
    return problem(503, FabricError(f"the registry is restarting or unreachable ({type(error).__name__})",
                                    code=ErrorCode.REGISTRY_UNAVAILABLE, where="registry",
                                    fix="retry after the Retry-After seconds: nothing was lost"))


@api.exception_handler(Exception)
async def _internal_error(_: Request, error: Exception) -> JSONResponse:
    """A bug in fabric is a problem+json 500 with code INTERNAL: clients know it for fabric's own final
    answer, unlike the bare 500 of Serve's proxy when a replica died, which they retry."""
    logging.getLogger("fabric.gateway").exception("unexpected error", exc_info=error)
    return problem(500, FabricError(f"fabric failed unexpectedly: {type(error).__name__}", code=ErrorCode.INTERNAL,
                                    where="gateway", fix="report it with the gateway's log; retrying will not help"))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Starlette's own answers (an unparseable body, an unknown route, a wrong method) as problem+json too."""
    code = {404: ErrorCode.NOT_FOUND, 401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN}.get(
        error.status_code, ErrorCode.SPEC_INVALID)
    where = "body" if error.status_code == 400 else "request"  # 400: FastAPI could not parse the body
    response = problem(error.status_code, FabricError(str(error.detail), code=code, where=where,
                                                      fix="see /openapi.json for the routes and their shapes"))
    response.headers.update(error.headers or {})
    if error.status_code == 405:
        response.headers["Allow"] = _allowed_methods(request)
    return response


def _allowed_methods(request: Request) -> str:
    """Every method the path answers to. (Starlette's 405 names only the first route that matched the path,
    so a path with a GET and a POST route, like the kill-switch's, would claim to allow one of them.)"""
    methods: set[str] = set()
    for route in request.app.routes:
        path_regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if path_regex is not None and route_methods and path_regex.match(request.url.path):
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


@api.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
    from fabric.errors import Problem

    problems = tuple(Problem(ErrorCode.SPEC_FIELD, ".".join(str(p) for p in e["loc"]), e["msg"],
                             "see /openapi.json for the request's shape") for e in error.errors())
    return problem(422, FabricError(f"the request is invalid: {len(problems)} problem(s)",
                                    code=ErrorCode.SPEC_INVALID, problems=problems))


def _series(request: Request) -> GatewayMetrics:
    return cast(GatewayMetrics, request.app.state.gateway_metrics)


@api.middleware("http")
async def _metrics(request: Request, call_next: Any) -> Any:
    response = await call_next(request)
    route = request.scope.get("route")
    _series(request).request(getattr(route, "path", "unmatched"), response.status_code)
    return response


# The gateway only waits on the registry: it takes no CPU from the work, and one replica holds many
# requests at once (Serve's default of 5 in flight would queue 16 clients at the proxy).
# On the head: it reads the tokens file and the control key there (docs/security.md).
# Sealed (fabric/execute/sealed.py): Ray's `__ray_call__` on a replica would run a tenant's function beside the key.
@serve.deployment(ray_actor_options={"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.001},
                                     "runtime_env": sealing_runtime_env()}, max_ongoing_requests=256)
@serve.ingress(api)
class Gateway(MlRoutes, LlmRoutes, PipelineRoutes):
    def __init__(self, tokens_file: str | None = None, control_key_file: str | None = None) -> None:
        configure_logging(settings().log_format)  # json: this replica's records as JSON lines (fabric/logs.py)
        require_sealed("the gateway")  # before the control key is read: never in a process tenant code can call
        self._tokens_file = tokens_file or default_tokens_file()
        self._tokens = Tokens(self._tokens_file)
        config = settings()
        GUARD.configure(self._tokens, Limits(rate=config.gateway_rate, write_rate=config.gateway_write_rate,
                                             burst_s=config.gateway_burst_s,
                                             team_writes=config.gateway_team_writes))
        # Inside Serve, Ray is up: this only finds the registry.
        client = fb.connect(retry_for=REGISTRY_WAIT_S, control_key_file=control_key_file)
        if not isinstance(client, RayClient):  # no http(s) address is passed: always the Ray client
            raise TypeError(f"the gateway needs the Ray client, got {type(client).__name__}")
        self._client = client

    def _table(self) -> TokenTable:
        return self._tokens.table()  # re-read when the file changes: `fabric token` needs no restart

    def _who(self, request: Request) -> Principal:
        return self._table().authenticate(request.headers.get("authorization"))

    def _client_for(self, request: Request) -> RayClient:
        """For submitting: scoped to the token's team, with the team's grants, which the registry checks, and
        under the code policy as the token's role with the team's config (fabric/spec/policy.py)."""
        table = self._table()
        principal = table.authenticate(request.headers.get("authorization"))
        return self._client.for_team(principal.team, table.grants(principal.team), role=principal.role,
                                     config=table.teams.team(principal.team), trusted_driver_env=True)

    def _viewer_for(self, request: Request) -> RayClient:
        """For reading and cancelling: an admin token sees every team's work (and work run without the
        gateway, e.g. `fabric run`, which has no team), as /quotas does; any other token its team's."""
        principal = self._who(request)
        return self._client if principal.admin else self._client.for_team(principal.team)

    def _admin(self, request: Request) -> Principal:
        principal = self._who(request)
        if not principal.admin:
            raise FabricError("this route needs an admin token", code=ErrorCode.FORBIDDEN, where="Authorization",
                              fix="use a token made with `fabric token --team T --admin`")
        return principal

    @api.get("/api/orch/admin/kill-switch")
    def kill_switch_state(self, request: Request) -> dict[str, Any]:
        self._admin(request)
        return self._client.kill_switch()

    @api.post("/api/orch/admin/kill-switch")
    def kill_switch(self, request: Request, body: KillSwitchBody) -> dict[str, Any]:
        principal = self._admin(request)
        return self._client.kill_switch(body.on, body.reason, _actor(principal.team, body.actor))

    @api.post("/api/orch/admin/drain")
    def drain(self, request: Request, body: DrainBody) -> dict[str, Any]:
        principal = self._admin(request)
        return self._client.drain(body.timeout_s, _actor(principal.team, body.actor))

    @api.get("/healthz")
    def healthz(self, request: Request) -> JSONResponse:
        try:
            ok = self._client.ping()
        except Exception:  # noqa: BLE001 - any failure to reach the registry is "unhealthy"
            ok = False
        _series(request).registry_up(ok)  # probes call this often: Ray's agent sees the registry go
        return JSONResponse({"registry": "ok" if ok else "unreachable"}, status_code=200 if ok else 503)

    @api.get("/metrics", response_class=PlainTextResponse)
    def metrics(self, request: Request) -> PlainTextResponse:
        try:
            fabric_metrics, up = self._client.metrics_text(), True
        except Exception:  # noqa: BLE001 - the gateway's own series still answer while the registry is away
            fabric_metrics, up = "", False
        _series(request).registry_up(up)
        # Two expositions with distinct names, one after the other, are one valid exposition.
        return PlainTextResponse(_series(request).render() + fabric_metrics, media_type=CONTENT_TYPE_LATEST)

    @api.post("/api/orch/submit", status_code=202)
    async def submit(self, request: Request, response: Response, body: SubmitBody) -> dict[str, Any]:
        client = self._client_for(request)
        if body.refs:
            raise FabricError("refs are not supported in this build", code=ErrorCode.SPEC_FIELD, where="refs",
                              fix="pass data locations as node params")
        # validated here, off the event loop and before the registry sees it; a string is text, never a path
        submission = await client.submit_async(body.dag_spec, body.runtime_params, from_wire=True)
        response.headers["Location"] = _status_url(request, submission.id)
        return {"submission_id": submission.id, "created": submission.created}

    @api.get("/api/orch/status/{submission_id}")
    async def status(self, request: Request, submission_id: str) -> dict[str, Any]:
        # One registry call: it answers NOT_FOUND for an unknown id or another team's.
        # RayClient.get keeps the protocol's return type; its handle is always a RaySubmission.
        submission = cast(RaySubmission, self._viewer_for(request).get(submission_id, check=False))
        status = await submission.status_async()
        return status.to_dict()

    @api.get("/api/orch/logs/{submission_id}")
    def logs(self, request: Request, submission_id: str, node: Annotated[str, Query(min_length=1)],
             tail: Annotated[int | None, Query(ge=1, le=100_000)] = None) -> dict[str, Any]:
        text = self._viewer_for(request).get(submission_id).logs(node, tail)
        return {"submission_id": submission_id, "node": node, "text": text}

    @api.post("/api/orch/cancel/{submission_id}", status_code=202)
    def cancel(self, request: Request, response: Response, submission_id: str) -> dict[str, Any]:
        self._viewer_for(request).get(submission_id).cancel()
        response.headers["Location"] = _status_url(request, submission_id)
        return {"submission_id": submission_id, "cancelling": True}

    @api.get("/api/orch/workers")
    def workers(self, request: Request) -> dict[str, Any]:
        self._who(request)
        return {"workers": self._client.workers()}

    @api.get("/api/orch/queues")
    def queues(self, request: Request) -> dict[str, Any]:
        """Nodes waiting for admission (this team's), why and where, and the depth per pool/priority."""
        view = self._queues(request)
        return {"admission": view["admission"], "queue": view["queue"], "depth": view["depth"]}

    @api.get("/api/orch/quotas")
    def quotas(self, request: Request) -> dict[str, Any]:
        """The teams' budgets and use today (an admin token sees every team)."""
        view = self._queues(request)
        return {"admission": view["admission"], "quotas": view["quotas"]}

    def _queues(self, request: Request) -> dict[str, Any]:
        principal = self._who(request)
        client = self._client if principal.admin else self._client.for_team(principal.team)
        return client.queues()

    @api.post("/api/orch/pipelines", status_code=201)
    def register_pipeline(self, request: Request, body: RegisterBody) -> dict[str, Any]:
        spec = read_document(body.dag_spec)  # text, never a path on this host
        return self._client_for(request).register(spec, body.max_active_runs, body.overlap)

    @api.get("/api/orch/pipelines")
    def pipelines(self, request: Request) -> dict[str, Any]:
        return {"items": self._client_for(request).pipelines()}

    @api.get("/api/orch/pipelines/{pipeline_id}/versions")
    def pipeline_versions(self, request: Request, pipeline_id: str) -> dict[str, Any]:
        return {"items": self._client_for(request).pipeline_versions(pipeline_id)}

    @api.get("/api/orch/pipelines/{pipeline_id}/runs")
    def pipeline_runs(self, request: Request, pipeline_id: str,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict[str, Any]:
        return {"items": self._client_for(request).pipeline_runs(pipeline_id, limit)}

    @api.post("/api/orch/pipelines/{pipeline_id}/runs", status_code=202)
    def run_pipeline(self, request: Request, response: Response, pipeline_id: str, body: RunBody) -> dict[str, Any]:
        reply = self._client_for(request).run_pipeline(pipeline_id, body.params or None, version=body.version,
                                                        runtime_params=body.runtime_params)
        if reply.get("submission_id"):
            response.headers["Location"] = _status_url(request, reply["submission_id"])
        return reply

    @api.post("/api/orch/pipelines/{pipeline_id}/schedules", status_code=201)
    def put_schedule(self, request: Request, pipeline_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._client_for(request).schedule(pipeline_id, body)  # validated by the registry: 422 naming fields

    @api.get("/api/orch/schedules")
    def all_schedules(self, request: Request) -> dict[str, Any]:
        return {"items": self._client_for(request).schedules()}

    @api.get("/api/orch/pipelines/{pipeline_id}/schedules")
    def schedules(self, request: Request, pipeline_id: str) -> dict[str, Any]:
        return {"items": self._client_for(request).schedules(pipeline_id)}

    @api.post("/api/orch/pipelines/{pipeline_id}/schedules/{name}/pause")
    def pause_schedule(self, request: Request, pipeline_id: str, name: str) -> dict[str, Any]:
        return self._client_for(request).pause_schedule(pipeline_id, name, True)

    @api.post("/api/orch/pipelines/{pipeline_id}/schedules/{name}/resume")
    def resume_schedule(self, request: Request, pipeline_id: str, name: str) -> dict[str, Any]:
        return self._client_for(request).pause_schedule(pipeline_id, name, False)

    @api.post("/api/orch/rerun/{submission_id}", status_code=202)
    def rerun(self, request: Request, response: Response, submission_id: str, body: RerunBody) -> dict[str, Any]:
        reply = self._client_for(request).rerun_reply(submission_id, body.from_node, body.submission_id)
        response.headers["Location"] = _status_url(request, reply["submission_id"])
        return reply

    @api.get("/api/orch/submissions")
    def submissions(self, request: Request, state: str | None = None,
                    label: Annotated[list[str] | None, Query(description="k:v, repeatable")] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                    search: Annotated[str | None, Query(max_length=200,
                                                        description="a substring of the pipeline or the id")] = None,
                    cursor: Annotated[str | None, Query(max_length=1000,
                                                        description="the previous page's next_cursor")] = None,
                    ) -> dict[str, Any]:
        if len(label or []) > MAX_LABEL_FILTERS:
            raise FabricError(f"{len(label or [])} label filters, more than {MAX_LABEL_FILTERS}",
                              code=ErrorCode.SPEC_FIELD, where="label", fix="filter on fewer labels")
        labels = {}
        for item in label or []:
            key, sep, value = item.partition(":")
            if not sep or not key:
                raise FabricError(f"label filter {item!r} is not k:v", code=ErrorCode.SPEC_FIELD, where="label",
                                  fix="write it as label=project:xs")
            labels[key] = value
        page = self._viewer_for(request).list(state, limit, labels or None, search=search or None, cursor=cursor)
        return {"items": list(page), "next_cursor": page.next_cursor}


def default_tokens_file() -> str:
    """FABRIC_TOKENS, else `$FABRIC_HOME/tokens.yaml`, as this replica's process sees them (fabric/settings.py)."""
    return settings().tokens


def build_app(args: dict[str, str] | None = None) -> Any:
    """For `serve run serve.gateway:build_app tokens_file=... num_replicas=2` and Serve config files."""
    args = args or {}
    tokens_file = args.get("tokens_file") or default_tokens_file()
    # serve.deployment makes Gateway a Deployment; mypy keeps a decorated class's own type.
    return Gateway.options(num_replicas=int(args.get("num_replicas", 1))).bind(  # type: ignore[attr-defined]
        tokens_file, args.get("control_key_file"))


# `serve run serve.gateway:app`: binding builds a description only (nothing starts at import); the
# tokens file is found from FABRIC_TOKENS / FABRIC_HOME when the replica starts.
app = Gateway.bind()  # type: ignore[attr-defined]

