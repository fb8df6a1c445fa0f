"""The gateway's OpenAI-compatible routes for `llm_serve` applications: `POST /v1/completions` and
`POST /v1/chat/completions` (streamed as server-sent events with `"stream": true`), and `GET /api/llm/{name}/stats`
(the merge counters and each arm's statistics).

The body's `model` is the served name. A caller needs a token (the Guard middleware checks `/v1/` as it does
`/api/`), and its team must own the name or be one the owner published it to, as for `/api/predict/{name}`.
"""

# No `from __future__ import annotations`: FastAPI must see real types on Serve's wrapped methods.
import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from fabric.errors import ErrorCode, FabricError
from fabric.ml.genai.openai import ChatRequest, CompletionRequest, chunk, new_id, response, sse

router = APIRouter()
COMPLETION_TIMEOUT_S = 120.0


def _failed(name: str, message: str, bad_input: bool) -> FabricError:
    if bad_input:
        return FabricError(f"the model {name!r} cannot take this request: {message[:500]}",
                           code=ErrorCode.KIND_PARAMS, where="max_tokens" if "max_tokens" in message else "body",
                           fix="ask for fewer tokens, or a shorter prompt")
    return FabricError(f"the model {name!r} failed: {message.splitlines()[-1][:500] if message else 'no answer'}",
                       code=ErrorCode.INTERNAL, where="model", fix="see the llm_serve replica's log")


class LlmRoutes:
    """Routes mixed into the Gateway deployment (with MlRoutes' `_may_predict` and `_model`)."""

    async def _llm(self, request: Request, name: str) -> Any:
        principal = self._who(request)  # type: ignore[attr-defined]
        await asyncio.to_thread(self._may_predict, principal, name)  # type: ignore[attr-defined]
        return await asyncio.to_thread(self._model, name)  # type: ignore[attr-defined]

    async def _complete(self, request: Request, kind: str, body: Any) -> Any:
        handle = await self._llm(request, body.model)
        payload = body.model_dump()
        if body.stream:
            return StreamingResponse(_events(handle, kind, body.model, payload), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            reply = await asyncio.wait_for(handle.complete.remote(kind, payload), COMPLETION_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the replica's error, named; an app gone is a 404 next time
            await asyncio.to_thread(self._model, body.model, True)  # type: ignore[attr-defined]
            if "'complete'" in str(exc):  # a `serve` kind's router has no such method
                raise _not_llm(body.model) from None
            raise _failed(body.model, str(exc), False) from None
        result = reply["result"]
        if "error" in result:
            raise _failed(body.model, result["error"], bool(result.get("bad_input")))
        extra = {"arm": reply["arm"], "model_uri": reply["model_uri"], "merged": reply["merged"]}
        return response(kind, body.model, result, extra)

    @router.post("/v1/completions")
    async def completions(self, request: Request, body: CompletionRequest) -> Any:
        return await self._complete(request, "completion", body)

    @router.post("/v1/chat/completions")
    async def chat_completions(self, request: Request, body: ChatRequest) -> Any:
        return await self._complete(request, "chat", body)

    @router.get("/api/llm/{name}/stats")
    async def llm_stats(self, request: Request, name: str) -> dict[str, Any]:
        handle = await self._llm(request, name)
        try:
            view: dict[str, Any] = await asyncio.wait_for(handle.describe.remote(), COMPLETION_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            raise _failed(name, str(exc), False) from None
        if view.get("kind") != "llm":
            raise _not_llm(name)
        return view


def _not_llm(name: str) -> FabricError:
    return FabricError(f"{name!r} is served by the serve kind, not llm_serve: it has no completions",
                       code=ErrorCode.KIND_PARAMS, where="model", fix=f"use POST /api/predict/{name}")


async def _events(handle: Any, kind: str, name: str, payload: dict[str, Any]) -> AsyncIterator[str]:
    """SSE: `data: {chunk}` per piece of text, a last chunk with the finish reason, then `data: [DONE]`. An error
    after the stream began can only be told in the stream: a `data: {"error": ...}` event, then [DONE]."""
    request_id, first = new_id(kind), True
    try:
        async for item in handle.options(stream=True).stream.remote(kind, payload):
            if "arm" in item:
                continue
            if "error" in item:
                error = _failed(name, item["error"], bool(item.get("bad_input")))
                yield sse({"error": {"message": error.message, "code": error.code.value, "where": error.where}})
                break
            if "text" in item:
                yield sse(chunk(kind, request_id, name, item["text"], None, first))
                first = False
            else:
                yield sse(chunk(kind, request_id, name, None, item.get("finish_reason"), first))
    except Exception as exc:  # noqa: BLE001 - told in the stream (the status line is already sent)
        yield sse({"error": {"message": f"the model {name!r} failed: {str(exc).splitlines()[-1][:500]}",
                             "code": ErrorCode.INTERNAL.value, "where": "model"}})
    yield sse("[DONE]")


__all__ = ["LlmRoutes", "router"]
