"""The gateway's ML routes: `POST /api/predict/{name}` (models the `serve` and `promote` kinds deployed)
and `GET /api/orch/artifacts/...` (a submission's report and its nodes' files).

A mixin the Gateway class inherits, so the routes share its auth (`_who`) and its problem+json errors;
`api.include_router(router)` in serve/gateway.py mounts them.
"""

# No `from __future__ import annotations`: FastAPI must see real types on Serve's wrapped methods.
import asyncio
import mimetypes
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from fabric.errors import ErrorCode, FabricError, NotFoundError

router = APIRouter()
PREDICT_TIMEOUT_S = 30.0
OWNER_CACHE_S = 60.0


class PredictBody(BaseModel):
    """`instances`: a list of records ({feature: value}) or rows, or a {column: [values]} dict."""

    model_config = ConfigDict(extra="forbid")
    instances: list[Any] | dict[str, Any] = Field(description="the model's input rows")


def _check_name(name: str) -> None:
    from fabric.kinds.serve_kind import NAME_PATTERN

    if not NAME_PATTERN.match(name):
        raise FabricError(f"{name[:100]!r} is not a served name", code=ErrorCode.SPEC_FIELD, where="name",
                          fix="a served name is a letter, then letters, digits, '_' or '-'")


class MlRoutes:
    """Routes mixed into the Gateway deployment (which provides `_who` and `_client_for`)."""

    def _model(self, name: str, fresh: bool = False) -> Any:
        from fabric.kinds.serving import router as model_router

        _check_name(name)
        handles = self.__dict__.setdefault("_model_handles", {})
        if fresh or name not in handles:
            handle = model_router(name)
            if handle is None:
                handles.pop(name, None)
                raise NotFoundError(f"no model is served as {name!r}", code=ErrorCode.NOT_FOUND, where="name",
                                    fix="run a DAG whose serve (or promote) node has params.name: " + name)
            handles[name] = handle
        return handles[name]

    def _may_predict(self, principal: Any, name: str) -> None:
        """A served name is its owning team's (and an admin's), and other teams' where its owner published it.
        A name no team owns (deployed by `fabric run` or the SDK, outside the gateway) is an admin's only."""
        if principal.admin:
            return
        # A name keeps its owner (a claim is withdrawn only when the registry refused its submission, within
        # the same request): an owner is cached for a minute, no owner is never cached.
        owners = self.__dict__.setdefault("_model_owners", {})
        owner, seen = owners.get(name, (None, 0.0))
        if owner is None or time.monotonic() - seen > OWNER_CACHE_S:
            claim = self._client.served_names([name]).get(name)  # type: ignore[attr-defined]
            owner = claim.owner if claim is not None else None
            owners[name] = (owner, time.monotonic())
        if owner is None:
            raise NotFoundError(f"no model is served as {name!r} for team {principal.team!r}",
                                code=ErrorCode.NOT_FOUND, where="name",
                                fix="run a DAG whose serve (or promote) node has params.name: " + name)
        if not self._table().teams.may_predict(owner, name, principal.team):  # type: ignore[attr-defined]
            raise FabricError(f"the served name {name!r} belongs to another team, which has not published it to "
                              f"team {principal.team!r}", code=ErrorCode.FORBIDDEN, where="name",
                              fix="ask its team to list yours under teams.<owner>.serve.publish in the tokens file")

    @router.post("/api/predict/{name}")
    async def predict(self, request: Request, name: str, body: PredictBody) -> dict[str, Any]:
        principal = self._who(request)  # type: ignore[attr-defined]
        if not body.instances:
            raise FabricError("no instances to predict", code=ErrorCode.SPEC_FIELD, where="instances",
                              fix="send {\"instances\": [{...}, ...]}")
        _check_name(name)
        await asyncio.to_thread(self._may_predict, principal, name)
        handle = await asyncio.to_thread(self._model, name)
        try:
            reply = await asyncio.wait_for(handle.predict.remote(body.instances), PREDICT_TIMEOUT_S)
        except (TimeoutError, FabricError):
            raise
        except Exception as exc:  # noqa: BLE001 - a model that cannot take the input is the caller's 422
            # A handle follows its application across redeploys; one that was deleted is a 404 (raised here).
            await asyncio.to_thread(self._model, name, True)
            raise FabricError(f"the model {name!r} could not predict: {str(exc).splitlines()[-1][:500]}",
                              code=ErrorCode.KIND_PARAMS, where="instances",
                              fix="send instances with the columns and types the model was trained on") from None
        return {"name": name, "model_uri": reply["model_uri"], "arm": reply["arm"],
                "predictions": reply["predictions"]}

    def _artifact_client(self, request: Request) -> Any:
        """An admin token sees every submission's artifacts (a team token, its team's)."""
        principal = self._who(request)  # type: ignore[attr-defined]
        client = self._client  # type: ignore[attr-defined]
        return client if principal.admin else client.for_team(principal.team)

    @router.get("/api/orch/artifacts/{submission_id}")
    def artifact_index(self, request: Request, submission_id: str) -> dict[str, Any]:
        return self._artifact_client(request).artifacts(submission_id)

    @router.get("/api/orch/artifacts/{submission_id}/metrics.json")
    def run_report(self, request: Request, submission_id: str) -> Response:
        body = self._artifact_client(request).artifact(submission_id, None, "metrics.json")
        return Response(body, media_type="application/json")

    @router.get("/api/orch/artifacts/{submission_id}/{node}/{name:path}")
    def artifact(self, request: Request, submission_id: str, node: str, name: str) -> Response:
        body = self._artifact_client(request).artifact(submission_id, node, name)
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(body, media_type=media)
