"""The gateway's event trigger and backfill routes: `POST /api/orch/pipelines/{id}/trigger` (idempotent by its
`Idempotency-Key` header) and `/api/orch/pipelines/{id}/backfills`, `/api/orch/backfills/...`.

A mixin the Gateway class inherits (as serve/ml_routes.py), so the routes share its auth (`_client_for`) and its
problem+json errors; `api.include_router(router)` in serve/gateway.py mounts them.
"""

# No `from __future__ import annotations`: FastAPI must see real types on Serve's wrapped methods.
import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from fabric.errors import ErrorCode, FabricError

router = APIRouter()


class TriggerBody(BaseModel):
    """`POST /api/orch/pipelines/{id}/trigger`: the run's pipeline params and version (default the latest)."""

    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] = Field(default_factory=dict, description="the pipeline's params")
    version: int | None = Field(None, ge=1)


class BackfillBody(BaseModel):
    """`POST /api/orch/pipelines/{id}/backfills`: validated by the registry (a 422 naming each field)."""

    model_config = ConfigDict(extra="forbid")
    start: str = Field(description="the first date, YYYY-MM-DD")
    end: str = Field(description="the last date, included")
    step: str = Field("1d", description="Nd, Nw or Nb (business days)")
    params: dict[str, Any] = Field(default_factory=dict)
    date_param: str = "as_of"
    max_active: int = 4
    version: int | None = None
    backfill_id: str | None = Field(None, description="its name and idempotency key (made when absent)")


def _url(request: Request, path: str) -> str:
    root = request.scope.get("root_path", "").rstrip("/")
    return root + path


class PipelineRoutes:
    """Routes mixed into the Gateway deployment (which provides `_client_for`)."""

    @router.post("/api/orch/pipelines/{pipeline_id}/trigger", status_code=201, responses={
        200: {"description": "the same key again: the run it started (`created: false`), or `skipped: true`"}})
    def trigger(self, request: Request, response: Response, pipeline_id: str, body: TriggerBody,
                idempotency_key: Annotated[str | None, Header(
                    description="the event's id: the same key again answers the same run")] = None,
                ) -> dict[str, Any]:
        if not idempotency_key:
            raise FabricError("a trigger needs an Idempotency-Key header", code=ErrorCode.SPEC_FIELD,
                              where="Idempotency-Key", fix="send the event's own id, e.g. 'Idempotency-Key: evt-81'")
        client = self._client_for(request)  # type: ignore[attr-defined]
        reply: dict[str, Any] = client.trigger(pipeline_id, idempotency_key, body.params or None,
                                               version=body.version)
        if not reply.get("created"):
            response.status_code = 200  # the same key again (or skipped by max_active_runs): nothing new
        if reply.get("submission_id"):
            sid = urllib.parse.quote(reply["submission_id"], safe=":")
            response.headers["Location"] = _url(request, f"/api/orch/status/{sid}")
        return reply

    @router.post("/api/orch/pipelines/{pipeline_id}/backfills", status_code=201, responses={
        200: {"description": "the same backfill_id and request again: that backfill (`created: false`)"}})
    def backfill(self, request: Request, response: Response, pipeline_id: str, body: BackfillBody) -> dict[str, Any]:
        client = self._client_for(request)  # type: ignore[attr-defined]
        reply: dict[str, Any] = client.backfill(
            pipeline_id, body.start, body.end, step=body.step, params=body.params, date_param=body.date_param,
            max_active=body.max_active, version=body.version, backfill_id=body.backfill_id)
        if not reply.get("created"):
            response.status_code = 200
        response.headers["Location"] = _url(
            request, f"/api/orch/backfills/{urllib.parse.quote(reply['backfill_id'], safe='')}")
        return reply

    @router.get("/api/orch/backfills")
    def backfills(self, request: Request,
                  pipeline_id: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
        return {"items": self._client_for(request).backfills(pipeline_id)}  # type: ignore[attr-defined]

    @router.get("/api/orch/backfills/{backfill_id}")
    def backfill_status(self, request: Request, backfill_id: str) -> dict[str, Any]:
        reply: dict[str, Any] = self._client_for(request).backfill_status(backfill_id)  # type: ignore[attr-defined]
        return reply

    @router.post("/api/orch/backfills/{backfill_id}/cancel")
    def cancel_backfill(self, request: Request, backfill_id: str) -> dict[str, Any]:
        reply: dict[str, Any] = self._client_for(request).cancel_backfill(backfill_id)  # type: ignore[attr-defined]
        return reply
