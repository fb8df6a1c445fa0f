"""Kind `serve`: deploy the upstream `model_uri` as a Ray Serve application behind the gateway's
`POST /api/predict/{name}`, with the node's replica count or autoscaling config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fabric.errors import Problem
from fabric.kinds.base import NodeCall, params_problem
from fabric.spec import NodeSpec

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")  # a served name; here, so checks never import Serve
SERVE_PARAMS = {"name", "autoscaling", "num_replicas", "replica_cpus", "tracking_uri"}
AUTOSCALING_KEYS = {"min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests",
                    "upscale_delay_s", "downscale_delay_s", "max_ongoing_requests"}


def check_model_node(node: NodeSpec, where: str, kind: str, allowed: set[str]) -> list[Problem]:
    """What `serve` and `promote` share: a served name, a `model_uri` input, known params."""
    problems = []
    name = node.params.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        problems.append(params_problem(f"{where}.params.name", f"{kind} node {node.id!r} needs params.name, the "
                                       "served name (a letter, then letters, digits, '_' or '-')",
                                       "set params.name: e.g. 'xs_bilstm'"))
    if "model_uri" not in {entry.partition("=")[0] for entry in node.ins}:
        problems.append(params_problem(f"{where}.ins", f"{kind} node {node.id!r} has no model_uri input",
                                       "add `ins: [model_uri]` wired to a node that outputs the model's URI"))
    unknown = sorted(set(node.params) - allowed)
    if unknown:
        problems.append(params_problem(f"{where}.params", f"unknown {kind} params {unknown}",
                                       f"{kind} takes: {', '.join(sorted(allowed))}"))
    return problems


class ServeKind:
    name = "serve"

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        problems = check_model_node(node, where, "serve", SERVE_PARAMS)
        scaling = node.params.get("autoscaling")
        if scaling is not None and (not isinstance(scaling, dict) or set(scaling) - AUTOSCALING_KEYS):
            problems.append(params_problem(f"{where}.params.autoscaling", "autoscaling must be a mapping of Serve "
                                           f"autoscaling fields ({', '.join(sorted(AUTOSCALING_KEYS))})",
                                           "e.g. {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 2}"))
        if len(node.outs) > 1:
            problems.append(params_problem(f"{where}.outs", "a serve node has one out: its endpoint",
                                           "declare at most one out, e.g. `outs: [endpoint]`"))
        return problems

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        from fabric.context import context
        from fabric.kinds.serving import deploy
        from fabric.ml.tracking import tracking_uri

        params = call.params
        model_uri = str(inputs["model_uri"])
        deploy(params["name"], model_uri, tracking_uri=params.get("tracking_uri") or tracking_uri(call.home),
               autoscaling=params.get("autoscaling"), num_replicas=params.get("num_replicas"),
               replica_cpus=float(params.get("replica_cpus", 0.1)))
        context().logger.info("serving %s as %r at /api/predict/%s", model_uri, params["name"], params["name"])
        endpoint = {"name": params["name"], "model_uri": model_uri, "route": f"/api/predict/{params['name']}"}
        return endpoint
