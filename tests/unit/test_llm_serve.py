"""llm_serve without Ray: the OpenAI-compatible bodies (an unknown sampling param is a 422 naming it), the merge key,
the kind's submit-time checks, the served-name claim, the engine's batches and streams on the tiny LM, and the
agent example's loop against a scripted endpoint."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient

from fabric.errors import ErrorCode
from fabric.ml.genai.openai import ChatRequest, CompletionRequest, chunk, response, sse
from fabric.spec import load_spec

pytestmark = pytest.mark.timeout(120)


def _app() -> TestClient:
    """The gateway's own 422 handler over the route's body model (serve/gateway.py), on a bare app."""
    from serve.gateway import _invalid_request

    api = FastAPI()
    api.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]

    @api.post("/v1/completions")
    def completions(body: CompletionRequest) -> dict[str, Any]:
        return body.model_dump()

    @api.post("/v1/chat/completions")
    def chat(body: ChatRequest) -> dict[str, Any]:
        return body.model_dump()

    return TestClient(api)


def test_an_unknown_sampling_param_is_a_422_naming_it():
    client = _app()
    reply = client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "frequency_penalty": 0.5})
    assert reply.status_code == 422, reply.text
    problems = reply.json()["problems"]
    assert [p["where"] for p in problems] == ["body.frequency_penalty"]
    bad = client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "robot", "content": "x"}],
                                                    "temperature": 9, "top_p": 0})
    assert {p["where"] for p in bad.json()["problems"]} == {"body.messages.0.role", "body.temperature", "body.top_p"}
    assert client.post("/v1/completions", json={"model": "../x", "prompt": "hi"}).status_code == 422
    assert client.post("/v1/completions", json={"model": "t", "prompt": "hi", "n": 2}).status_code == 422
    assert client.post("/v1/completions", json={"model": "t", "prompt": "hi", "stop": ["a"] * 5}).status_code == 422
    ok = client.post("/v1/completions", json={"model": "t", "prompt": "hi", "max_tokens": 4, "temperature": 0,
                                              "top_p": 0.9, "seed": 7, "stop": "\n", "stream": True})
    assert ok.status_code == 200 and ok.json()["seed"] == 7


def test_sampling_and_the_merge_key():
    greedy = CompletionRequest(model="m", prompt="p", max_tokens=5, temperature=0, stop="x")
    assert greedy.sampling().max_new_tokens == 5 and greedy.sampling().stop == ["x"]
    twin = CompletionRequest(model="m", prompt="p", max_tokens=5, temperature=0, stop="x", stream=True, user="u")
    assert greedy.merge_key() == twin.merge_key() is not None  # stream and user do not change the answer
    assert CompletionRequest(model="m", prompt="q", temperature=0).merge_key() != greedy.merge_key()
    seeded = CompletionRequest(model="m", prompt="p", temperature=0.7, seed=3)
    assert seeded.merge_key() is not None and seeded.sampling().seed == 3
    unseeded = CompletionRequest(model="m", prompt="p", temperature=0.7)
    assert unseeded.merge_key() is None  # independent samples are never merged
    chat = ChatRequest(model="m", messages=[{"role": "user", "content": "p"}], temperature=0)
    assert chat.merge_key() is not None


def test_response_chunk_and_event_shapes():
    result = {"completion": "abc", "prompt_tokens": 2, "completion_tokens": 3, "finish_reason": "length"}
    body = response("completion", "m", result, {"merged": False})
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "abc"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    chat = response("chat", "m", result, {})
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "abc"}
    first = chunk("chat", "id", "m", "a", None, first=True)
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"] == {"role": "assistant",
                                                                                           "content": "a"}
    assert chunk("completion", "id", "m", None, "stop")["choices"][0]["finish_reason"] == "stop"
    assert sse("[DONE]") == "data: [DONE]\n\n"


def _node(**params: Any) -> dict[str, Any]:
    return {"id": "llm", "kind": "llm_serve", "params": {"name": "tiny", "model": "/m", **params},
            "outs": ["endpoint"]}


def _problems(node: dict[str, Any]) -> list[Any]:
    from fabric.kinds.llm_serve import LlmServeKind

    source = {"id": "src", "kind": "python_task", "entrypoint": "m:f", "outs": ["model"]}
    spec = load_spec({"version": 1, "pipeline_id": "p", "nodes": [source, node]})
    return LlmServeKind().check(spec.nodes[1], "nodes[0]")


def test_the_kind_checks_its_params_at_submit():
    assert _problems(_node(autoscaling={"min_replicas": 1, "max_replicas": 2}, max_batch_size=4)) == []
    wheres = {p.where for p in _problems(_node(temperature=1, autoscaling={"max_replica": 2}))}
    assert wheres == {"nodes[0].params.temperature", "nodes[0].params.autoscaling"}
    assert {p.where for p in _problems(_node(name="no good"))} == {"nodes[0].params.name"}
    no_model = _node()
    del no_model["params"]["model"]
    assert [p.where for p in _problems(no_model)] == ["nodes[0].ins"]
    assert _problems({**no_model, "ins": ["model"]}) == []
    assert [p.where for p in _problems({**_node(), "ins": ["model"]})] == ["nodes[0].ins"]  # not both


def test_promote_takes_llm_serve_knobs_only_for_a_language_model():
    from fabric.kinds.promote import PromoteKind

    node = {"id": "promote", "kind": "promote", "ins": ["model_uri", "metrics"], "outs": ["model_uri"],
            "params": {"name": "tiny", "max_batch_size": 4}}
    src = {"id": "src", "kind": "python_task", "entrypoint": "m:f", "outs": ["model_uri", "metrics"]}

    def problems(params: dict[str, Any]) -> list[str]:
        spec = load_spec({"version": 1, "pipeline_id": "p", "nodes": [src, {**node, "params": params}]})
        return [p.where for p in PromoteKind().check(spec.nodes[1], "nodes[1]")]

    assert problems({"name": "tiny", "max_batch_size": 4}) == ["nodes[1].params"]
    assert problems({"name": "tiny", "llm": True, "max_batch_size": 4, "replica_gpus": 1}) == []


def test_the_model_input_names_its_model():
    from fabric.kinds.llm_serve import model_of

    assert model_of("/models/a") == "/models/a"
    assert model_of({"model_uri": "s3://b/m", "metrics": {}}) == "s3://b/m"
    with pytest.raises(ValueError, match="without any of"):
        model_of({"loss": 1.0})


def test_an_llm_serve_name_is_claimed_like_a_serve_name():
    from fabric.spec import parse_runtime_params
    from fabric.spec.policy import Principal, ServedName, planned_claims, resolved_nodes, violations
    from fabric.spec.teams import TeamConfig

    dag = load_spec({"version": 1, "pipeline_id": "p", "nodes": [_node(num_replicas=2)]})
    runtime = parse_runtime_params({})
    nodes = resolved_nodes(dag, runtime)
    research = Principal("research")
    assert planned_claims(nodes, research, {}) == [("tiny", ServedName("research", 2.0, 2), True)]
    theirs = {"tiny": ServedName("trading", 1.0, 1)}
    found = violations(dag, runtime, research, TeamConfig(), served=theirs)
    assert [p.where for p in found] == ["nodes[0].params.name"] and found[0].code is ErrorCode.POLICY_DENIED


def test_the_engine_batches_greedy_requests_and_streams_the_same_text(tiny_lm):
    from fabric.ml.genai.engine import ContextTooLong, LlmEngine

    engine = LlmEngine(str(tiny_lm))
    greedy = CompletionRequest(model="m", prompt="x", max_tokens=6, temperature=0).sampling()
    seeded = CompletionRequest(model="m", prompt="x", max_tokens=6, temperature=0.9, seed=5).sampling()
    made = engine.generate([("alpha beta", greedy), ("risk", greedy), ("alpha beta", seeded)])
    assert all(isinstance(m, dict) and m["completion_tokens"] <= 6 for m in made)
    alone = engine.generate([("alpha beta", seeded)])[0]
    assert alone == made[2]  # a seeded request's answer does not depend on its batch
    stream = engine.stream("alpha beta", greedy)
    assert "".join(stream) == made[0]["completion"] and stream.finish_reason == made[0]["finish_reason"]
    too_long = CompletionRequest(model="m", prompt="x", max_tokens=4000, temperature=0).sampling()
    assert isinstance(engine.generate([("x", too_long)])[0], ContextTooLong)
    with pytest.raises(ContextTooLong, match="max_tokens"):
        engine.stream("x", too_long)
    assert engine.stats["batches"] == 3 and engine.stats["streams"] == 1


def test_the_agent_loop_calls_tools_and_feeds_their_results_back():
    from jobs.genai.agent import parse_tool_call, run_loop

    assert parse_tool_call('ok {"tool": "price", "arguments": {"asset": "bond"}} done') == (
        "price", {"asset": "bond"})
    assert parse_tool_call("no json here") is None
    seen: list[list[dict[str, Any]]] = []
    replies = iter(['{"tool": "price", "arguments": {"asset": "bond"}}', "gibberish", "the answer"])

    def chat(messages: list[dict[str, Any]]) -> str:
        seen.append(list(messages))
        return next(replies)

    fallback = [{"tool": "compute", "arguments": {"op": "mul", "a": 2, "b": 3}}]
    transcript = run_loop(chat, "what is the bond worth?", {"bond": 101.5}, fallback, max_steps=4)
    steps = transcript["steps"]
    assert [s["source"] for s in steps] == ["model", "fallback", "final"]
    assert steps[0]["result"] == 101.5 and steps[1]["result"] == 6
    assert seen[1][-1] == {"role": "tool", "content": "101.5", "name": "price", "tool_call_id": "call_0"}
    assert transcript["answer"] == "the answer" and transcript["tool_calls"] == 2
