"""The gateway's routes for seeing the work: the DAG with its attempts' timeline, lineage, and the web UI.

`/ui` serves static files only (HTML, JS, CSS shipped in serve/ui/); everything they show comes from the
JSON routes, which need a bearer token like every other /api route. The routes run in the gateway's
replica (`serve.get_replica_context().servable_object` is the Gateway) and see what its status route sees:
the token's team's work; an admin token's, every team's.
"""

# No `from __future__ import annotations` here: FastAPI must see real types.
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse
from ray import serve

from fabric.errors import ErrorCode, FabricError

UI_DIR = Path(__file__).resolve().parent / "ui"
MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css",
         ".svg": "image/svg+xml", ".png": "image/png"}

router = APIRouter()


def _client(request: Request) -> Any:
    # The replica's object is the Gateway instance; Ray types it only as a callable.
    gateway: Any = serve.get_replica_context().servable_object
    return gateway._viewer_for(request)


@router.get("/api/orch/graph/{submission_id}")
def graph(request: Request, submission_id: str) -> dict[str, Any]:
    """The DAG (nodes, their upstream nodes), each attempt's queue wait and run time, and the critical path."""
    return _client(request).get(submission_id, check=False).graph()


@router.get("/api/orch/lineage/{submission_id}")
def lineage(request: Request, submission_id: str) -> dict[str, Any]:
    """OpenLineage RunEvents (START, COMPLETE, FAIL, ABORT) of the submission and of every node attempt,
    with input and output datasets and their content hashes."""
    return {"submission_id": submission_id, "events": _client(request).get(submission_id, check=False).lineage()}


@router.get("/ui", include_in_schema=False)
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui/", include_in_schema=False)
def ui_index() -> FileResponse:
    return ui_file("index.html")


@router.get("/ui/{name}", include_in_schema=False)
def ui_file(name: str) -> FileResponse:
    path = UI_DIR / name
    # Only the files shipped beside this module, by plain name: nothing else on disk can be asked for.
    if "/" in name or name.startswith(".") or path.suffix not in MEDIA or not path.is_file():
        raise FabricError(f"the UI has no file {name!r}", code=ErrorCode.NOT_FOUND, where="/ui",
                          fix="open /ui/")
    return FileResponse(path, media_type=MEDIA[path.suffix], headers={"Cache-Control": "no-cache"})
