"""Language models on Ray Serve (`llm_serve`): one application per served name, `fabric-model-<name>` as for
`serve`, made of a `stable` and (during a rollout) a `canary` LlmServer deployment behind an LlmRouter.

The router (one replica) splits traffic by weight and measures each arm as the `serve` kind's router does, so
`promote` can drive it, and it merges identical concurrent requests: a deterministic request (greedy, or sampled
with a seed) whose twin is still being generated waits for that generation instead of starting one. The servers
batch what reaches them with `@serve.batch`. Applications have no HTTP route of their own: the gateway's
`/v1/completions` and `/v1/chat/completions` (serve/llm_routes.py), with its auth, are the only way in.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from fabric.kinds.serving import _Arm, _ensure_serve, app_name


def parse(kind: str, body: dict[str, Any]) -> Any:
    from fabric.ml.genai.openai import ChatRequest, CompletionRequest

    return (ChatRequest if kind == "chat" else CompletionRequest).model_validate(body)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class LlmServer:
    """One model, loaded once per replica; requests reach it batched (`generate_batch`) or streamed."""

    def __init__(self, model: str, num_gpus: float = 0.0, max_batch_size: int = 8,
                 batch_wait_ms: float = 10.0, home: str | None = None) -> None:
        from fabric.ml.genai.engine import LlmEngine

        self.engine = LlmEngine(model, num_gpus, home)
        batched: Any = self.generate_batch  # serve.batch's wrapper: mypy sees the plain method
        batched.set_max_batch_size(max_batch_size)
        batched.set_batch_wait_timeout_s(batch_wait_ms / 1000)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate_batch(self, items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        made = await asyncio.to_thread(self.engine.generate, items)
        return [r if isinstance(r, dict) else {"error": str(r), "bad_input": isinstance(r, ValueError)}
                for r in made]

    async def complete(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        from fabric.ml.genai.openai import prompt_of

        request = parse(kind, body)
        prompt = prompt_of(kind, request.model_dump(), self.engine.tokenizer)
        result: dict[str, Any] = await self.generate_batch((prompt, request.sampling()))
        return result

    async def stream(self, kind: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Text pieces as they are made ({"text": ...}), then {"finish_reason", token counts}."""
        from fabric.ml.genai.openai import prompt_of

        request = parse(kind, body)
        prompt = prompt_of(kind, request.model_dump(), self.engine.tokenizer)
        try:
            stream = self.engine.stream(prompt, request.sampling())
        except ValueError as exc:
            yield {"error": str(exc), "bad_input": True}
            return
        pieces = iter(stream)
        try:
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                yield {"text": piece}
        finally:
            stream.cancel()  # the client went away, or a stop string ended it: the generation stops too
        yield {"finish_reason": stream.finish_reason, "prompt_tokens": stream.prompt_tokens,
               "completion_tokens": stream.completion_tokens}

    def stats(self) -> dict[str, Any]:
        return dict(self.engine.stats)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
class LlmRouter:
    """Splits by weight (`arm` forces a side: promote's shadow probes), merges identical requests in flight, and
    keeps each arm's errors and latency; one replica, so its weight, merges and statistics are the application's."""

    def __init__(self, name: str, stable: Any, canary: Any | None, weight: float, stable_uri: str,
                 canary_uri: str | None) -> None:
        self.name = name
        self.arms = {"stable": stable, "canary": canary}
        self.uris = {"stable": stable_uri, "canary": canary_uri}
        self.weight = weight if canary is not None else 0.0
        self.stats = {"stable": _Arm(), "canary": _Arm()}
        self.inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.counts = {"requests": 0, "merged": 0, "generated": 0, "streamed": 0}

    def _pick(self, arm: str | None) -> str:
        if arm is None:
            arm = "canary" if self.arms["canary"] is not None and random.random() < self.weight else "stable"
        if self.arms.get(arm) is None:
            raise ValueError(f"no {arm} deployment in this application")
        return arm

    async def complete(self, kind: str, body: dict[str, Any], arm: str | None = None) -> dict[str, Any]:
        """{"result": the generated completion (or an "error"), "arm", "model_uri", "merged"}."""
        key = parse(kind, body).merge_key()
        self.counts["requests"] += 1
        if key is not None:
            key = f"{kind}:{arm}:{key}"
            leader = self.inflight.get(key)
            if leader is not None:
                self.counts["merged"] += 1
                return {**await asyncio.shield(leader), "merged": True}
        task = asyncio.ensure_future(self._forward(kind, body, arm))
        if key is not None:
            self.inflight[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return await asyncio.shield(task)  # a caller that goes away does not cancel its followers' generation

    def _done(self, key: str, _: Any) -> None:
        self.inflight.pop(key, None)

    async def _forward(self, kind: str, body: dict[str, Any], arm: str | None) -> dict[str, Any]:
        arm = self._pick(arm)
        stats = self.stats[arm]
        started = time.perf_counter()
        stats.requests += 1
        self.counts["generated"] += 1
        try:
            result = await self.arms[arm].complete.remote(kind, body)
        except Exception:
            stats.errors += 1
            raise
        finally:
            stats.latencies.append((time.perf_counter() - started) * 1000)
        return {"result": result, "arm": arm, "model_uri": self.uris[arm], "merged": False}

    async def stream(self, kind: str, body: dict[str, Any], arm: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """The arm's streamed pieces; streamed requests are never merged (each is its own generation)."""
        arm = self._pick(arm)
        stats = self.stats[arm]
        started = time.perf_counter()
        stats.requests += 1
        self.counts["requests"] += 1
        self.counts["streamed"] += 1
        yield {"arm": arm, "model_uri": self.uris[arm]}
        try:
            async for item in self.arms[arm].options(stream=True).stream.remote(kind, body):
                yield item
        except Exception:
            stats.errors += 1
            raise
        finally:
            stats.latencies.append((time.perf_counter() - started) * 1000)

    async def predict(self, instances: Any, arm: str | None = None) -> dict[str, Any]:
        """`/api/predict` and promote's probes: each instance a prompt, or a completion body without `model`."""
        if not isinstance(instances, list):
            raise ValueError("an LLM's instances are a list of prompts (or of completion bodies)")
        bodies = [{"max_tokens": 16, "temperature": 0.0, **(i if isinstance(i, dict) else {"prompt": str(i)}),
                   "model": self.name} for i in instances]
        for body in bodies:
            parse("completion", body)  # a bad instance is the caller's error, never an arm's
        # Never merged: each probe of a promotion is a request the arm must answer itself.
        self.counts["requests"] += len(bodies)
        replies = await asyncio.gather(*(self._forward("completion", body, arm) for body in bodies))
        for reply in replies:
            if "error" in reply["result"]:
                raise ValueError(reply["result"]["error"])
        return {"predictions": [r["result"]["completion"] for r in replies],
                "model_uri": replies[0]["model_uri"] if replies else self.uris["stable"],
                "arm": replies[0]["arm"] if replies else "stable"}

    def set_weight(self, weight: float) -> float:
        self.weight = min(max(float(weight), 0.0), 1.0) if self.arms["canary"] is not None else 0.0
        return self.weight

    async def describe(self, reset: bool = False) -> dict[str, Any]:
        """Weight, URIs, each arm's statistics, the merge counters, and the stats of the stable replica that
        answered (one replica's, when there are several)."""
        replica = await self.arms["stable"].stats.remote()
        view = {"kind": "llm", "name": self.name, "weight": self.weight, "uris": dict(self.uris),
                "stats": {arm: s.view() for arm, s in self.stats.items()}, "merging": dict(self.counts),
                "replica": replica}
        if reset:
            self.stats = {"stable": _Arm(), "canary": _Arm()}
        return view


def deploy(name: str, stable_uri: str, *, canary_uri: str | None = None, weight: float = 0.0,
           autoscaling: dict[str, Any] | None = None, num_replicas: int | None = None, replica_cpus: float = 1.0,
           replica_gpus: float = 0.0, max_batch_size: int = 8, batch_wait_ms: float = 10.0,
           tracking_uri: str | None = None, home: str | None = None) -> Any:
    """(Re)deploy the LLM application of `name`; Serve updates in place what changed. Returns the router handle.
    (`tracking_uri` is taken for promote's sake and unused: an LLM is a save_pretrained directory, or a registered
    version (models:/) read from the tracking store of `home`.)"""
    _ensure_serve()
    scale: dict[str, Any] = {"autoscaling_config": dict(autoscaling)} if autoscaling else {
        "num_replicas": num_replicas or 1}
    actor: dict[str, Any] = {"num_cpus": replica_cpus, **({"num_gpus": replica_gpus} if replica_gpus else {})}
    server = LlmServer.options(ray_actor_options=actor, **scale)  # type: ignore[attr-defined]  # a Deployment
    args = (replica_gpus, max_batch_size, batch_wait_ms, home)
    stable = server.options(name="stable").bind(stable_uri, *args)
    canary = server.options(name="canary").bind(canary_uri, *args) if canary_uri else None
    app = LlmRouter.options(name="router").bind(  # type: ignore[attr-defined]  # a Deployment too
        name, stable, canary, weight, stable_uri, canary_uri)
    return serve.run(app, name=app_name(name), route_prefix=None)
