"""Kind `promote`: the staging -> canary -> prod gate. It requires a model card, metrics at or above their
thresholds, a max drawdown within bounds and a reproducible artifact hash; then it deploys the model as
the canary of the served name, shifts its traffic step by step (10 % -> 50 % -> 100 % by default) while
measuring the canary's error rate and p99 latency from the requests the router sends it (a probe load
it sends itself, plus any live traffic), and rolls back to 0 % when either crosses its threshold.

Every gate and every step is an audit event under `_promote:<name>` in the registry's append-only log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from fabric.errors import Problem
from fabric.kinds.base import NodeCall, params_problem
from fabric.kinds.serve_kind import SERVE_PARAMS, check_model_node
from fabric.spec import NodeSpec

LLM_PARAMS = {"replica_gpus", "max_batch_size", "batch_wait_ms"}  # llm_serve's deployment knobs, with `llm: true`
PROMOTE_PARAMS = SERVE_PARAMS | LLM_PARAMS | {"thresholds", "max_drawdown", "steps", "canary", "card_fields", "probe",
                                              "llm"}
CANARY_DEFAULTS = {"max_error_rate": 0.05, "max_p99_ms": 2000.0, "requests_per_step": 20, "shadow_per_step": 10}
DEFAULT_CARD_FIELDS = ("name", "intended_use", "training_data", "artifact_hash")


class PromotionError(Exception):
    """A gate failed, or the canary breached a threshold and was rolled back."""


class PromoteKind:
    name = "promote"

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        problems = check_model_node(node, where, "promote", PROMOTE_PARAMS)
        ins = {entry.partition("=")[0] for entry in node.ins}
        if "metrics" not in ins:
            problems.append(params_problem(f"{where}.ins", f"promote node {node.id!r} has no metrics input",
                                           "wire the backtest's metrics dict in as `metrics`"))
        steps = node.params.get("steps", [10, 50, 100])
        if (not isinstance(steps, list) or not steps or any(not isinstance(s, int | float) for s in steps)
                or steps != sorted(steps) or steps[-1] != 100 or steps[0] <= 0):
            problems.append(params_problem(f"{where}.params.steps", "steps must rise from above 0 to 100 (percent)",
                                           "e.g. steps: [10, 50, 100]"))
        thresholds = node.params.get("thresholds", {})
        if not isinstance(thresholds, dict) or any(not isinstance(v, int | float) for v in thresholds.values()):
            problems.append(params_problem(f"{where}.params.thresholds", "thresholds map metric names to minimums",
                                           "e.g. thresholds: {sharpe: 0.5}"))
        if len(node.outs) > 1 and set(node.outs) != {"model_uri", "promotion"}:
            problems.append(params_problem(f"{where}.outs", "promote's outs are [model_uri] or [model_uri, promotion]",
                                           "declare `outs: [model_uri]` (the promoted model) and maybe `promotion`"))
        if not node.params.get("llm") and set(node.params) & LLM_PARAMS:
            problems.append(params_problem(f"{where}.params", f"{sorted(set(node.params) & LLM_PARAMS)} are for "
                                           "promoting a language model", "set llm: true, or remove them"))
        unknown = sorted(set(node.params.get("canary", {})) - set(CANARY_DEFAULTS))
        if unknown:
            problems.append(params_problem(f"{where}.params.canary", f"unknown canary settings {unknown}",
                                           f"canary takes: {', '.join(CANARY_DEFAULTS)}"))
        return problems

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        return Promotion(call, inputs).run()


class Promotion:
    def __init__(self, call: NodeCall, inputs: Mapping[str, Any]) -> None:
        from fabric.context import context

        self.call, self.params, self.inputs = call, call.params, inputs
        self.name: str = call.params["name"]
        self.model_uri = str(inputs["model_uri"])
        from fabric.ml.tracking import tracking_uri

        self.tracking_uri = call.params.get("tracking_uri") or tracking_uri(call.home)
        self.log = context().logger
        self.record: list[dict[str, Any]] = []
        self.llm = bool(call.params.get("llm"))  # an llm_serve application: a save_pretrained model, no MLflow

    # -- audit --------------------------------------------------------------------------------

    def audit(self, source: str, target: str, reason: str) -> None:
        """An audit event (durable in the registry's log before this returns), and a line in the node's log."""
        self.record.append({"at": time.time(), "from": source, "to": target, "reason": reason})
        self.log.info("promote %s: %s -> %s: %s", self.name, source, target, reason)
        if self.call.control is None:
            return
        import ray

        registry = ray.get_actor(*self.call.control)
        c = self.call  # the attempt's grant: it may audit its own promotion only, signed as itself
        ray.get(registry.audit_attempt.remote(c.submission_id, c.node_id, c.attempt, c.grant, self.name, source, target,
                                              f"{reason} [{self.model_uri}]"), timeout=30)

    # -- gates --------------------------------------------------------------------------------

    def gates(self) -> list[str]:
        """Every failed gate, with why (an empty list: all passed). Each gate is audited."""
        failures = []
        for gate, problem in (("model_card", self._card_problem()), ("metrics", self._metrics_problem()),
                              ("max_drawdown", self._drawdown_problem()), ("artifact_hash", self._hash_problem())):
            self.audit(f"gate:{gate}", "fail" if problem else "pass", problem or "ok")
            if problem:
                failures.append(f"{gate}: {problem}")
        return failures

    def _card(self) -> dict[str, Any] | None:
        card = self.inputs.get("model_card")
        if isinstance(card, str):
            card = json.loads(card)
        return card if isinstance(card, dict) else None

    def _card_problem(self) -> str:
        card = self._card()
        if not card:
            return "no model card: wire a model_card input (a dict)"
        fields = self.params.get("card_fields", list(DEFAULT_CARD_FIELDS))
        missing = [f for f in fields if not card.get(f)]
        return f"the model card lacks {missing}" if missing else ""

    def _metrics_problem(self) -> str:
        metrics = self.inputs["metrics"]
        low = []
        for metric, minimum in self.params.get("thresholds", {}).items():
            value = metrics.get(metric) if isinstance(metrics, Mapping) else None
            if not isinstance(value, int | float) or value < minimum:
                low.append(f"{metric}={value} < {minimum}")
        return ", ".join(low)

    def _drawdown_problem(self) -> str:
        bound = self.params.get("max_drawdown")
        if bound is None:
            return ""
        drawdown = self.inputs["metrics"].get("max_drawdown")
        if not isinstance(drawdown, int | float):
            return "the metrics have no max_drawdown"
        return f"|max_drawdown| {abs(drawdown):.4f} > {bound}" if abs(drawdown) > float(bound) else ""

    def _hash_problem(self) -> str:
        from fabric.ml.tracking import artifact_hash

        recorded = (self._card() or {}).get("artifact_hash")
        if not recorded:
            return "no recorded artifact hash (the model card's artifact_hash)"
        if self.llm:
            from fabric.ml.genai.models import content_hash, resolve

            actual = content_hash(resolve(self.model_uri, home=self.call.home))
        else:
            actual = artifact_hash(self.model_uri, uri=self.tracking_uri)
        return "" if actual == recorded else f"the stored model hashes to {actual}, not the recorded {recorded}"

    # -- rollout ------------------------------------------------------------------------------

    def run(self) -> Any:
        from fabric.kinds import llm_serving, serving

        failures = self.gates()
        if failures:
            self.audit("staging", "rejected", "; ".join(failures))
            raise PromotionError(f"promotion of {self.model_uri} to {self.name!r} rejected: {'; '.join(failures)}")
        deploy: dict[str, Any] = {"tracking_uri": self.tracking_uri, "autoscaling": self.params.get("autoscaling"),
                  "num_replicas": self.params.get("num_replicas"),
                  "replica_cpus": float(self.params.get("replica_cpus", 0.1))}
        if self.llm:  # a models:/ reference is read from this home's tracking store
            deploy.update({k: v for k, v in self.params.items() if k in LLM_PARAMS}, home=self.call.home)
        current = serving.router(self.name)
        view = None if current is None else current.describe.remote().result()
        if view is not None and (view.get("kind") == "llm") != self.llm:
            served = "a language model (llm_serve)" if view.get("kind") == "llm" else "an MLflow model (serve)"
            raise PromotionError(f"{self.name!r} serves {served}; this promotion is of the other kind "
                                 f"({'llm: true' if self.llm else 'no llm'}): a name keeps one kind")
        stable_uri = None if view is None else view["uris"]["stable"]
        deployer = llm_serving if self.llm else serving
        if stable_uri is None:
            deployer.deploy(self.name, self.model_uri, **deploy)
            self.audit("staging", "prod", "first deployment of this name: stable at 100 % (no canary to compare)")
        elif stable_uri == self.model_uri:
            self.audit("prod", "prod", "this model is already the stable one")
        else:
            self._canary(deployer, stable_uri, deploy)
        values = {"model_uri": self.model_uri, "promotion": {"name": self.name, "decisions": self.record}}
        outs = self.call.declared_outs
        return values["model_uri"] if len(outs) <= 1 else {out: values[out] for out in outs}

    def _canary(self, serving: Any, stable_uri: str, deploy: dict[str, Any]) -> None:
        limits = {**CANARY_DEFAULTS, **self.params.get("canary", {})}
        handle = serving.deploy(self.name, stable_uri, canary_uri=self.model_uri, weight=0.0, **deploy)
        self.audit("staging", "canary 0 %", f"canary deployed beside stable {stable_uri}")
        probe = self.inputs.get("probe", self.params.get("probe"))
        for step in self.params.get("steps", [10, 50, 100]):
            handle.set_weight.remote(step / 100).result()
            handle.describe.remote(reset=True).result()
            _probe(handle, probe, int(limits["requests_per_step"]), int(limits["shadow_per_step"]))
            stats = handle.describe.remote().result()["stats"]["canary"]
            breach = _breach(stats, limits)
            if breach:
                handle.set_weight.remote(0.0).result()
                self.audit(f"canary {step} %", "rolled back", f"{breach}; canary at 0 %, stable {stable_uri} serves")
                serving.deploy(self.name, stable_uri, **deploy)  # the canary goes away
                raise PromotionError(f"canary of {self.model_uri} rolled back at {step} %: {breach}")
            self.audit(f"canary {step} %", f"canary {step} %" if step < 100 else "prod",
                       f"canary healthy: {stats['requests']} requests, error rate {stats['error_rate']:.3f}, "
                       f"p99 {stats['p99_ms']} ms")
        serving.deploy(self.name, self.model_uri, **deploy)  # the canary becomes the stable one
        self.audit("canary 100 %", "prod", f"promoted: stable is now {self.model_uri} (was {stable_uri})")


def _probe(handle: Any, instances: Any, routed: int, shadow: int) -> None:
    """Probe load: `routed` requests split by the current weight, and `shadow` straight to the canary so that
    even a 10 % step is measured on enough canary requests. Failures are counted by the router."""
    if instances is None:
        raise PromotionError("promote needs probe instances (params.probe or a `probe` input) to test the canary")
    calls = [handle.predict.remote(instances) for _ in range(routed)]
    calls += [handle.predict.remote(instances, "canary") for _ in range(shadow)]
    for response in calls:  # sent all at once above; here only collected
        try:
            response.result(timeout_s=60)
        except Exception:  # noqa: BLE001 - the router counted it as the canary's or stable's error
            pass


def _breach(stats: dict[str, Any], limits: dict[str, Any]) -> str:
    if stats["requests"] == 0:
        return "the canary received no requests"
    if stats["error_rate"] > float(limits["max_error_rate"]):
        return f"error rate {stats['error_rate']:.3f} > {limits['max_error_rate']}"
    if stats["p99_ms"] is not None and stats["p99_ms"] > float(limits["max_p99_ms"]):
        return f"p99 latency {stats['p99_ms']} ms > {limits['max_p99_ms']} ms"
    return ""
