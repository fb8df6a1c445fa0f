"""The OpenAI-compatible request and response shapes of `llm_serve` (pure pydantic, no Ray): what a body may hold
(an unknown field is refused by name), the sampling it maps to, the merge key of identical requests, and the
completion, chat and streamed-chunk bodies."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fabric.ml.genai.params import SamplingParams

MAX_PROMPT_CHARS = 100_000
NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"  # a served name (fabric.kinds.serve_kind.NAME_PATTERN)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(pattern=NAME, description="the served name (an llm_serve node's params.name)")
    max_tokens: int = Field(16, ge=1, le=4096, description="tokens to generate at most")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy (deterministic)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="with temperature > 0: reproducible sampling")
    stop: str | list[str] | None = Field(None, description="up to 4 strings that end the completion")
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one choice per request (the only value taken)")
    user: str | None = Field(None, max_length=256, description="accepted for compatibility, unused")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and (len(value) > 4 or any(not s or len(s) > 256 for s in value)):
            raise ValueError("stop takes at most 4 non-empty strings of up to 256 characters")
        return value

    def sampling(self) -> SamplingParams:
        """The sampling the generator takes. No seed with temperature > 0: a fresh random seed per request."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        seed = self.seed if self.seed is not None or self.temperature == 0 else uuid.uuid4().int & 0x7FFF_FFFF
        return SamplingParams(max_new_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              seed=seed or 0, stop=stop)

    def merge_key(self) -> str | None:
        """Requests with the same key get the same answer, so concurrent ones are generated once: deterministic
        ones only (greedy, or sampled with a seed). None: this request is never merged."""
        if self.temperature > 0 and self.seed is None:
            return None
        body = self.model_dump(exclude={"stream", "user"})
        return hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=16).hexdigest()


class CompletionRequest(_Body):
    """`POST /v1/completions`."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)
    name: str | None = Field(None, max_length=64)
    tool_call_id: str | None = Field(None, max_length=64)


class ChatRequest(_Body):
    """`POST /v1/chat/completions`."""

    messages: list[Message] = Field(min_length=1, max_length=256)


def chat_prompt(messages: list[dict[str, Any]], tokenizer: Any = None) -> str:
    """The prompt of a conversation: the tokenizer's chat template when it has one, else one `role: content` line
    per message and `assistant:` to answer after."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def prompt_of(kind: str, body: dict[str, Any], tokenizer: Any = None) -> str:
    return chat_prompt(body["messages"], tokenizer) if kind == "chat" else str(body["prompt"])


def _envelope(kind: str, request_id: str, model: str, chunk: bool) -> dict[str, Any]:
    obj = ("chat.completion.chunk" if chunk else "chat.completion") if kind == "chat" else "text_completion"
    return {"id": request_id, "object": obj, "created": int(time.time()), "model": model}


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def response(kind: str, model: str, result: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A whole completion's body from one generated result (completion, token counts, finish reason)."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": result["finish_reason"]}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": result["completion"]}
    else:
        choice.update(text=result["completion"], logprobs=None)
    usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
             "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}
    return {**_envelope(kind, new_id(kind), model, False), "choices": [choice], "usage": usage, "fabric": extra}


def chunk(kind: str, request_id: str, model: str, text: str | None, finish_reason: str | None,
          first: bool = False) -> dict[str, Any]:
    """One streamed chunk: a piece of text, or (text None) the last one with its finish reason."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
    if kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice.update(text=text or "", logprobs=None)
    return {**_envelope(kind, request_id, model, True), "choices": [choice]}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: `data: {...}` (or `data: [DONE]`) and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
