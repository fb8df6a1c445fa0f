"""Kind `llm_serve`: deploy a causal LM saved with `save_pretrained` (the model reference `llm_generate` takes) as a
Ray Serve application behind the gateway's OpenAI-compatible `POST /v1/completions` and `/v1/chat/completions`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from fabric.errors import Problem
from fabric.kinds.base import NodeCall, params_problem
from fabric.kinds.serve_kind import AUTOSCALING_KEYS, NAME_PATTERN
from fabric.ml.genai.params import _Strict
from fabric.spec import NodeSpec

MODEL_KEYS = ("model", "model_uri", "path")  # where a mapping input (a finetune's result) names its model


class LlmServeParams(_Strict):
    """Params of `llm_serve` (checked at submit: an unknown key is named)."""

    name: str = Field(pattern=NAME_PATTERN.pattern)
    model: str | None = Field(None, min_length=1, description="else the node's one input names it")
    autoscaling: dict[str, float | int] | None = None
    num_replicas: int | None = Field(None, ge=1, le=64)
    replica_cpus: float = Field(1.0, ge=0.0, le=64.0)
    replica_gpus: float = Field(0.0, ge=0.0, le=8.0)
    max_batch_size: int = Field(8, ge=1, le=256)
    batch_wait_ms: float = Field(10.0, ge=0.0, le=1000.0)


def model_of(value: Any) -> str:
    """The model reference an input carries: a path or URI string, or a mapping with one under MODEL_KEYS."""
    if isinstance(value, Mapping):
        for key in MODEL_KEYS:
            if isinstance(value.get(key), str) and value[key]:
                return str(value[key])
        raise ValueError(f"the model input is a mapping without any of {list(MODEL_KEYS)}: {sorted(value)[:10]}")
    if isinstance(value, str | bytes) or hasattr(value, "__fspath__"):
        return str(value.decode() if isinstance(value, bytes) else value)
    raise ValueError(f"the model input is a {type(value).__name__}, not a path, URI or mapping naming one")


class LlmServeKind:
    name = "llm_serve"

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        from fabric.kinds.llm import genai_problems

        problems = [p for p in genai_problems(node, where, LlmServeParams, len(node.ins))
                    if not p.where.endswith(".outs")]
        if len(node.ins) > 1 or (not node.ins) == (node.params.get("model") is None):
            problems.append(params_problem(f"{where}.ins", "llm_serve takes its model from params.model or from "
                                           "one input, exactly one of the two",
                                           "set params.model to a save_pretrained directory, or wire one input"))
        scaling = node.params.get("autoscaling")
        if isinstance(scaling, dict) and set(scaling) - AUTOSCALING_KEYS:
            problems.append(params_problem(f"{where}.params.autoscaling", "unknown autoscaling fields "
                                           f"{sorted(set(scaling) - AUTOSCALING_KEYS)}",
                                           f"Serve's autoscaling takes: {', '.join(sorted(AUTOSCALING_KEYS))}"))
        if len(node.outs) > 1:
            problems.append(params_problem(f"{where}.outs", "an llm_serve node has one out: its endpoint",
                                           "declare at most one out, e.g. `outs: [endpoint]`"))
        return problems

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        from fabric.context import context
        from fabric.kinds.llm_serving import deploy
        from fabric.ml.genai import models

        params = LlmServeParams.model_validate(dict(call.params))
        model = params.model or model_of(next(iter(inputs.values())))
        models.resolve(model, home=call.home)  # a missing model fails here, naming it, before any replica starts
        deploy(params.name, model, autoscaling=params.autoscaling, num_replicas=params.num_replicas,
               replica_cpus=params.replica_cpus, replica_gpus=params.replica_gpus,
               max_batch_size=params.max_batch_size, batch_wait_ms=params.batch_wait_ms, home=call.home)
        context().logger.info("serving %s as %r at /v1/completions and /v1/chat/completions", model, params.name)
        return {"name": params.name, "model": model, "routes": ["/v1/completions", "/v1/chat/completions"],
                "stats": f"/api/llm/{params.name}/stats"}
