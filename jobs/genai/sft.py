"""The fine-tuning example's last node: one completion from the `llm_serve` endpoint that serves the fine-tuned
model, over HTTP through the gateway's OpenAI-compatible `/v1/completions` when given its URL and a token secret,
else through the served application's router from inside the cluster."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def complete(endpoint: Mapping[str, Any], prompt: str, max_tokens: int = 8, url: str | None = None,
             token_secret: str | None = None) -> dict[str, Any]:
    """The node: one greedy completion of `prompt`; the reply's text, finish reason and token counts."""
    from fabric.context import context

    name = str(endpoint["name"])
    body = {"model": name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    if url:
        import httpx

        if not token_secret or "/" not in token_secret:
            raise ValueError("with url, token_secret names the gateway token's secret as <scope>/<key>")
        scope, _, key = token_secret.partition("/")
        reply = httpx.post(f"{url.rstrip('/')}/v1/completions", json=body, timeout=60.0,
                           headers={"Authorization": f"Bearer {context().secret(key, scope)}"})
        reply.raise_for_status()
        choice, usage = reply.json()["choices"][0], reply.json()["usage"]
        answer = {"text": choice["text"], "finish_reason": choice["finish_reason"], "usage": usage, "via": url}
    else:
        from ray import serve

        from fabric.kinds.serving import app_name

        result = serve.get_app_handle(app_name(name)).complete.remote("completion", body).result(timeout_s=60)
        if "error" in result["result"]:
            raise RuntimeError(result["result"]["error"])
        answer = {"text": result["result"]["completion"], "finish_reason": result["result"]["finish_reason"],
                  "via": "router", "model_uri": result["model_uri"]}
    answer = {"prompt": prompt, "model": endpoint.get("model"), **answer}
    context().logger.info("completion: %s", json.dumps(answer))
    return answer
