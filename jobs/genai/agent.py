"""The agent example's node (jobs/dags/agent_tools.yaml): a small tool-calling loop against an `llm_serve` endpoint.

Each turn sends the conversation to `/v1/chat/completions` (or, inside the cluster without a gateway URL, to the
served application's router) and parses the reply for one JSON tool call, `{"tool": name, "arguments": {...}}`.
A call runs the tool and appends its result as a `tool` message for the next turn; a reply without a call is the
answer. A tiny random model never writes a tool call, so the example also passes `fallback` calls: when a reply
has no call, the next fallback call runs in its place and the transcript marks it `source: fallback`. With a real
model the same loop runs on the model's own calls (`source: model`) and the fallback is left empty.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from typing import Any

SYSTEM = ("You can call tools. To call one, reply with exactly one JSON object "
          '{"tool": <name>, "arguments": {...}}; to answer, reply with plain text. Tools: '
          "price(asset): the asset's last price; compute(op, a, b): op is add, sub, mul or div.")
OPS: dict[str, Callable[[float, float], float]] = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
                                                   "div": operator.truediv}
Chat = Callable[[list[dict[str, Any]]], str]


def parse_tool_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """The first JSON object in `text` with a string `tool` and an object `arguments`, else None."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start >= 0:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("tool"), str) and isinstance(value.get("arguments"),
                                                                                          dict):
            return value["tool"], value["arguments"]
        start = text.find("{", start + 1)
    return None


def call_tool(name: str, arguments: Mapping[str, Any], prices: Mapping[str, float]) -> Any:
    """A tool's result; a bad call's result is {"error": why}, which the model reads on its next turn."""
    try:
        if name == "price":
            asset = str(arguments["asset"])
            return prices.get(asset, {"error": f"no price for {asset!r}"})
        if name == "compute":
            return OPS[str(arguments["op"])](float(arguments["a"]), float(arguments["b"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        return {"error": f"bad call of {name}: {exc!r}"}
    return {"error": f"no tool {name!r}: the tools are price and compute"}


def run_loop(chat: Chat, question: str, prices: Mapping[str, float], fallback: list[dict[str, Any]],
             max_steps: int = 4) -> dict[str, Any]:
    """Turns until a reply carries no tool call (and no fallback call is left), or `max_steps` turns."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    pending = list(fallback)
    steps: list[dict[str, Any]] = []
    answer = None
    for _ in range(max_steps):
        reply = chat(messages)
        call, source = parse_tool_call(reply), "model"
        if call is None and pending:
            planned = pending.pop(0)
            call, source = (str(planned["tool"]), dict(planned.get("arguments", {}))), "fallback"
        if call is None:
            steps.append({"source": "final", "reply": reply})
            answer = reply
            break
        name, arguments = call
        result = call_tool(name, arguments, prices)
        call_id = f"call_{sum(1 for s in steps if 'tool' in s)}"
        messages.append({"role": "assistant", "content": json.dumps({"tool": name, "arguments": arguments})})
        messages.append({"role": "tool", "content": json.dumps(result), "name": name, "tool_call_id": call_id})
        steps.append({"source": source, "reply": reply, "tool": name, "arguments": arguments, "result": result})
    calls = [s for s in steps if "tool" in s]
    return {"question": question, "answer": answer, "steps": steps, "tool_calls": len(calls),
            "from_model": sum(1 for s in calls if s["source"] == "model"), "turns": len(steps)}


def http_chat(url: str, token: str, name: str, sampling: Mapping[str, Any], timeout: float = 60.0) -> Chat:
    """A turn through the gateway's OpenAI-compatible route, as any client would send it."""
    import httpx

    def chat(messages: list[dict[str, Any]]) -> str:
        reply = httpx.post(f"{url.rstrip('/')}/v1/chat/completions", timeout=timeout,
                           headers={"Authorization": f"Bearer {token}"},
                           json={"model": name, "messages": messages, **sampling})
        reply.raise_for_status()
        return str(reply.json()["choices"][0]["message"]["content"])

    return chat


def handle_chat(name: str, sampling: Mapping[str, Any], timeout: float = 60.0) -> Chat:
    """A turn through the served application's router, from inside the cluster (no gateway, no token)."""
    from ray import serve

    from fabric.kinds.serving import app_name

    router = serve.get_app_handle(app_name(name))

    def chat(messages: list[dict[str, Any]]) -> str:
        reply = router.complete.remote("chat", {"model": name, "messages": messages, **sampling}).result(
            timeout_s=timeout)
        if "error" in reply["result"]:
            raise RuntimeError(reply["result"]["error"])
        return str(reply["result"]["completion"])

    return chat


def agent(endpoint: Mapping[str, Any], question: str, prices: Mapping[str, float],
          fallback: list[dict[str, Any]] | None = None, max_steps: int = 4, max_tokens: int = 24,
          url: str | None = None, token_secret: str | None = None) -> dict[str, Any]:
    """The node: the loop against the llm_serve node's endpoint; through the gateway at `url` when given (the
    token read from the secret `token_secret`, `<scope>/<key>`), else through the application's router."""
    from fabric.context import context

    name = str(endpoint["name"])
    sampling = {"max_tokens": max_tokens, "temperature": 0.0}
    if url:
        if not token_secret or "/" not in token_secret:
            raise ValueError("with url, token_secret names the gateway token's secret as <scope>/<key>")
        scope, _, key = token_secret.partition("/")
        chat = http_chat(url, context().secret(key, scope), name, sampling)
    else:
        chat = handle_chat(name, sampling)
    transcript = run_loop(chat, question, prices, list(fallback or []), max_steps)
    (context().artifact_dir / "transcript.json").write_text(json.dumps(transcript, indent=1))
    context().logger.info("agent: %d turns, %d tool calls (%d from the model)", transcript["turns"],
                          transcript["tool_calls"], transcript["from_model"])
    return transcript
