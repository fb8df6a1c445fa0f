"""Compile a validated DagSpec plus runtime params into an ExecutionPlan (pure, deterministic)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from fabric.errors import ErrorCode, Problem, SpecError
from fabric.plan.expand import map_node
from fabric.plan.fuse import fused_predecessors
from fabric.plan.hashing import node_content_hash
from fabric.plan.model import ExecutionPlan, InputWire, NodePlan, ResourceUnit, RetryPolicy
from fabric.spec import (
    DagSpec,
    NodeSpec,
    Priority,
    Resources,
    RuntimeParams,
    Slo,
    split_input,
    topological_order,
)
from fabric.spec.conditions import WHEN_INPUT, sources
from fabric.spec.params import references, resolve_params, substitute

KindCheck = Callable[[NodeSpec, str], list[Problem]]

DEFAULT_CPU = 1.0


def _merge_slo(dag: Slo | None, node: Slo | None) -> Slo:
    """Node SLO fields override the DAG's field by field, retry's fields included (a node that sets only
    `retry.max_attempts` keeps the DAG's backoff)."""
    base = dag.model_dump(exclude_none=True) if dag else {}
    if node is not None:
        override = node.model_dump(exclude_none=True)
        if node.retry is not None:
            override["retry"] = {**base.get("retry", {}), **node.retry.model_dump(exclude_unset=True)}
        base.update(override)
    return Slo.model_validate(base)


def _merge_resources(default: Resources | None, node: Resources | None) -> Resources:
    base = default.model_dump(exclude_none=True) if default else {}
    override = node.model_dump(exclude_none=True) if node else {}
    custom = {**base.get("custom", {}), **override.get("custom", {})}
    base.update(override)
    base["custom"] = custom
    return Resources.model_validate(base)


def resource_unit(res: Resources) -> ResourceUnit:
    custom = dict(res.custom)
    if res.gpu_mem:
        # Ray's GPU fractions are logical; GPU memory is modelled as a custom resource in GiB.
        custom["gpu_mem_gb"] = round(res.gpu_mem / 2**30, 3)
    return ResourceUnit(
        num_cpus=DEFAULT_CPU if res.cpu is None else float(res.cpu),
        num_gpus=float(res.gpu or 0.0),
        memory=int(res.mem) if res.mem else None,
        custom=custom,
        workers=res.workers or 1,
        placement=str(res.placement) if res.placement else None,
        fallback_cpus=None if res.fallback is None else float(
            res.fallback.cpu if res.fallback.cpu is not None else (DEFAULT_CPU if res.cpu is None else res.cpu)),
        fallback_after_s=res.fallback.after if res.fallback is not None else None,
    )


# A pool is a Ray custom resource `pool:<name>` that the pool's nodes advertise in large amounts
# (cluster.yaml, k8s/): a node asks for a sliver of it, so Ray places it only there and the
# autoscaler knows which node type to launch for it.
POOL_RESOURCE_PREFIX = "pool:"
POOL_SHARE = 0.001


def pooled(unit: ResourceUnit, pool: str) -> ResourceUnit:
    return replace(unit, custom={**unit.custom, f"{POOL_RESOURCE_PREFIX}{pool}": POOL_SHARE})


def defaults(spec: DagSpec) -> dict[str, Any]:
    """The pipeline params that have a default, resolved (what a run that sets none gets)."""
    return {name: p.resolve(p.default) for name, p in spec.params.items() if not p.required}


def resolved_nodes(spec: DagSpec, params: Mapping[str, Any]) -> list[NodeSpec]:
    """The spec's nodes with every `{{ params.NAME }}` in their params replaced by its value."""
    if not params:
        return list(spec.nodes)
    return [node.model_copy(update={"params": substitute(node.params, params)}) if references(node.params)
            else node for node in spec.nodes]


def kind_problems(spec: DagSpec, runnable: Mapping[str, KindCheck],
                  params: Mapping[str, Any] | None = None) -> list[Problem]:
    """Reject, at submit time, kinds with no executor in this build and kind-specific param errors (on node
    params resolved with `params`, by default the pipeline params' defaults)."""
    problems: list[Problem] = []
    for index, node in enumerate(resolved_nodes(spec, defaults(spec) if params is None else params)):
        where = f"nodes[{index}].kind"
        check = runnable.get(node.kind)
        if check is None:
            problems.append(Problem(
                ErrorCode.KIND_NOT_RUNNABLE, where,
                f"kind {node.kind!r} of node {node.id!r} has no executor in this build",
                f"use one of the kinds that run here: {', '.join(sorted(runnable))}"))
            continue
        problems.extend(check(node, f"nodes[{index}]"))
    return problems


def compile_plan(spec: DagSpec, runtime: RuntimeParams | None = None,
                 runnable: Mapping[str, KindCheck] | None = None, *, fuse: bool = True) -> ExecutionPlan:
    """Wire outs to ins, resolve resources and SLOs, hash every node, mark fused chains (unless not `fuse`).
    Raises SpecError."""
    runtime = runtime or RuntimeParams()
    params, problems = resolve_params(spec.params, runtime.params)
    if problems:
        raise SpecError.from_problems(problems, what="runtime params")
    if runnable is not None:
        problems = kind_problems(spec, runnable, params)
        if problems:
            raise SpecError.from_problems(problems)
    order = topological_order(spec)
    # Node params as the run sees them: the content hash, and so the cache key, covers the resolved values.
    by_id = {node.id: node for node in resolved_nodes(spec, params)}
    upstream: dict[str, list[str]] = {n: [] for n in order}
    downstream: dict[str, list[str]] = {n: [] for n in order}
    for edge in dict.fromkeys((e.from_, e.to) for e in spec.edges):  # a repeated edge adds nothing
        upstream[edge[1]].append(edge[0])
        downstream[edge[0]].append(edge[1])
    producers: dict[str, list[str]] = {}
    for node in spec.nodes:
        for out in node.outs:
            producers.setdefault(out, []).append(node.id)
    wiring = _Wiring(order, producers, upstream)
    outs_of = {node.id: list(node.outs) for node in spec.nodes}

    default_res = spec.resources.default if spec.resources else None
    dag_slo = _merge_slo(spec.slo, None)
    dag_unit = resource_unit(_merge_resources(default_res, None))
    dag_priority = (runtime.priority or (spec.slo.priority if spec.slo else None) or "normal")
    hashes: dict[str, str] = {}
    plans: dict[str, NodePlan] = {}
    for node_id in order:
        node = by_id[node_id]
        wires = tuple(wiring.wires(node))
        when_params: dict[str, Any] = {}
        if node.when:  # its condition's values arrive as inputs too, so Ray resolves them like any other
            wires, when_params = condition_wires(node, wires, upstream, producers, outs_of, params)
        # Most nodes inherit the DAG's SLO and resources: merge only when a node overrides them.
        slo = dag_slo if node.slo is None else _merge_slo(spec.slo, node.slo)
        unit = dag_unit if node.resources is None else resource_unit(_merge_resources(default_res, node.resources))
        retry = slo.retry
        content = node_content_hash(
            kind=node.kind, params=node.params if node.when is None and node.on_skipped == "skip" else
            {**node.params, "?when": node.when, "?params": when_params, "?on_skipped": node.on_skipped},
            entrypoint=node.entrypoint, env=node.env,
            image=node.image, outs=tuple(node.outs),
            inputs={w.name: f"{hashes[w.producer]}:{w.out}" for w in wires})
        hashes[node_id] = content
        pool = node.pool or (runtime.affinity.compute_pool if runtime.affinity else None)
        if pool:
            unit = pooled(unit, pool)
        plans[node_id] = NodePlan(
            node_id=node_id, kind=node.kind, params=dict(node.params), entrypoint=node.entrypoint,
            env=dict(node.env), image=node.image, inputs=wires, outs=tuple(node.outs),
            upstream=tuple(upstream[node_id]), downstream=tuple(downstream[node_id]),
            # The DAG's max_runtime bounds the whole submission; a node times out only on its own.
            unit=unit, max_runtime=node.slo.max_runtime if node.slo else None,
            retry=RetryPolicy(retry.max_attempts, retry.backoff_sec, retry.backoff_factor,
                              retry.max_backoff_sec) if retry else RetryPolicy(),
            priority=Priority(runtime.priority or slo.priority or Priority.NORMAL),
            qos=str(slo.qos) if slo.qos else None,
            pool=pool,
            cache=bool(node.cache),
            cache_shared=node.cache == "shared",
            content_hash=content,
            when=node.when, when_params=when_params, on_skipped=node.on_skipped,
            on_exit=str(node.on_exit) if node.on_exit else None,
            # Ready siblings may share its Ray task (schedule/riders.py), as chains fuse: unless it decides a
            # condition, runs without a skipped input, is an exit hook or says `fuse: false`.
            packed=fuse and node.fuse and node.when is None and node.on_skipped == "skip" and not node.on_exit,
        )
        if node.map is not None:  # the map node only expands; its timeout and retries are each child's
            plans[node_id] = map_node(plans[node_id], node.map, pack=node.fuse)
    # A cache key covers the data a node reads: its producers digest their outputs (fabric.execute.cache).
    for node_id in order:
        if plans[node_id].cache:
            for producer in {node_id, *(w.producer for w in plans[node_id].inputs)}:
                plans[producer] = replace(plans[producer], digest_outputs=True)
        fan = plans[node_id].map
        if fan is not None and fan.cache:  # a cached map's children: their items come hashed by the count task
            for producer in {w.producer for w in plans[node_id].inputs if w.name != fan.over}:
                plans[producer] = replace(plans[producer], digest_outputs=True)
    for node_id in order:  # a map node's outputs are gathered when its children end: its readers never go early
        if plans[node_id].map is not None or any(plans[w.producer].map is not None for w in plans[node_id].inputs):
            for reader in (plans[node_id].downstream if plans[node_id].map is not None else (node_id,)):
                plans[reader] = replace(plans[reader], after_map=True)
    if fuse:
        # A condition, or a node run without a skipped input, decides in its own task (not inside a chain).
        flags = {n.id: n.fuse and n.when is None and n.on_skipped == "skip" for n in spec.nodes}
        previous_of = fused_predecessors(tuple(order), plans, flags)
        for node_id, previous in previous_of.items():  # a chain's members already share one task: no riders
            plans[node_id] = replace(plans[node_id], fused_after=previous, packed=False)
        for head in set(previous_of.values()) - set(previous_of):
            plans[head] = replace(plans[head], packed=False)
    return ExecutionPlan(
        pipeline_id=spec.pipeline_id,
        plan_hash=hashlib.sha256("".join(hashes[n] for n in order).encode()).hexdigest(),
        order=tuple(order),
        nodes=plans,
        max_runtime=spec.slo.max_runtime if spec.slo else None,
        priority=Priority(dag_priority),
        labels=dict(runtime.labels),
        secrets_scope=tuple(runtime.secrets_scope),
        params=params,
    )


def condition_wires(node: NodeSpec, wires: tuple[InputWire, ...], upstream: Mapping[str, list[str]],
                    producers: Mapping[str, list[str]], outs: Mapping[str, list[str]], params: Mapping[str, Any]
                    ) -> tuple[tuple[InputWire, ...], dict[str, Any]]:
    """A conditional node's wires plus one per upstream value its `when` reads, and the params it reads."""
    assert node.when is not None
    ancestors: set[str] = set()
    stack = list(upstream[node.id])
    while stack:
        parent = stack.pop()
        if parent not in ancestors:
            ancestors.add(parent)
            stack.extend(upstream[parent])
    extra: list[InputWire] = []
    read: dict[str, Any] = {}
    for source in sources(node.when, ancestors, producers, outs, params):
        if source.producer is None:
            read[source.out] = params[source.out]
        else:
            extra.append(InputWire(name=WHEN_INPUT + source.key, producer=source.producer, out=source.out))
    return (*wires, *extra), read


class _Wiring:
    """Which node feeds each input: the one producer of its out, or, when several nodes produce that out,
    the one among the node's ancestors (validation guarantees there is exactly one). Ancestor sets are
    bitsets made once in plan order, so this is linear in the edges, not a walk of the graph per input."""

    def __init__(self, order: list[str], producers: Mapping[str, list[str]],
                 upstream: Mapping[str, list[str]]) -> None:
        self._order, self._producers, self._upstream = order, producers, upstream
        self._ancestors: dict[str, int] | None = None
        self._masks: dict[str, int] = {}
        self._pos: dict[str, int] = {}

    def wires(self, node: NodeSpec) -> list[InputWire]:
        wires = []
        for entry in node.ins:
            param, out = split_input(entry)
            candidates = self._producers[out]
            producer = candidates[0] if len(candidates) == 1 else self._ancestor_among(node.id, out)
            wires.append(InputWire(name=param, producer=producer, out=out))
        return wires

    def _ancestor_among(self, node_id: str, out: str) -> str:
        if self._ancestors is None:
            self._pos = {n: i for i, n in enumerate(self._order)}
            self._ancestors = {}
            for n in self._order:  # parents come first in plan order
                mask = 0
                for parent in self._upstream[n]:
                    mask |= self._ancestors[parent] | 1 << self._pos[parent]
                self._ancestors[n] = mask
        if out not in self._masks:
            self._masks[out] = sum(1 << self._pos[p] for p in dict.fromkeys(self._producers[out]))
        found = self._ancestors[node_id] & self._masks[out]
        if not found:
            raise AssertionError(f"no producer upstream of {node_id}: the spec was not validated")
        return self._order[(found & -found).bit_length() - 1]
