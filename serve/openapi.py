"""The gateway's OpenAPI document tells the truth about errors: every route may answer problem+json."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from fabric.errors import FabricError

# Every error the gateway sends is application/problem+json with this shape (serve/gateway.py `problem`).
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "Problem",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "code": {"type": "string"}, "where": {"type": ["string", "null"]}, "fix": {"type": ["string", "null"]},
        "problems": {"type": "array", "items": {"type": "object", "properties": {
            "code": {"type": "string"}, "where": {"type": ["string", "null"]}, "message": {"type": "string"},
            "fix": {"type": ["string", "null"]}}}},
    },
}
ERROR_STATUSES = {
    "400": "bad request", "401": "no or unknown bearer token", "403": "the token's team may not do this",
    "404": "no such submission, node or artifact (for this team)", "409": "conflict (idempotency key, not finished)",
    "413": "body over the size limit", "422": "invalid request: every problem, with where and how to fix",
    "429": "the team is over its request rate (see Retry-After)",
    "500": "INTERNAL: a bug in fabric (logged); not worth retrying",
    "503": "the registry is restarting or admission is closed (see Retry-After)", "504": "timed out",
}
# Routes that are not behind a token (Serve health, Prometheus, the UI's static files).
OPEN_PATHS = ("/healthz", "/metrics")


def problem(status: int, error: FabricError) -> JSONResponse:
    """A FabricError as the gateway's application/problem+json answer (the shape of PROBLEM_SCHEMA)."""
    body = {"type": f"https://fabric.dev/errors/{error.code}", "title": error.message, "status": status,
            "code": str(error.code), "where": error.where, "fix": error.fix,
            "problems": [p.to_dict() for p in error.problems]}
    headers = {"Retry-After": "5"} if status == 503 else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="fabric"'}  # RFC 6750: the scheme a client must use
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def document_problems(app: FastAPI) -> None:
    """Replace FastAPI's default 422 schema (which the gateway never sends) with the Problem document, and
    add the other error statuses to every route."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            document.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
            problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
            for path, operations in document.get("paths", {}).items():
                for operation in operations.values():
                    responses = operation.setdefault("responses", {})
                    for status, description in ERROR_STATUSES.items():
                        if path in OPEN_PATHS and status in ("401", "403"):
                            continue
                        responses[status] = {"description": description, "content": problem}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
