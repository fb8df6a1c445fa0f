"""Kind `pipeline`: a node that runs another pipeline (a registered one, or an inline sub-spec) as a child DAG.
It is expanded at submit into the parent's nodes, `<node>.<child node>`, so every child node has its own state,
attempts, logs and lineage (pure: the registry passes how a registered pipeline is found, for the team)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fabric.errors import ErrorCode, Problem, SpecError
from fabric.spec.expr import BoolOp, Compare, Expr, ExprError, ListOf, Lit, Name, Not, parse, unparse
from fabric.spec.load import load_spec
from fabric.spec.models import DagSpec
from fabric.spec.params import ParamSpec, resolve_params, substitute
from fabric.spec.validate import derive_edges

PIPELINE_KIND = "pipeline"
MAX_NESTING = 8  # pipelines inside pipelines, registered or inline
_FIELDS = frozenset({"id", "kind", "params", "ins", "outs", "when", "on_skipped", "description"})
_PARAMS = frozenset({"pipeline", "version", "spec", "params"})

Resolve = Callable[[str, int | None], Mapping[str, Any]]  # (pipeline id, version or None) -> its raw spec


def has_pipelines(raw: Mapping[str, Any]) -> bool:
    nodes = raw.get("nodes")
    return isinstance(nodes, list) and any(isinstance(n, Mapping) and n.get("kind") == PIPELINE_KIND for n in nodes)


def expand(raw: Mapping[str, Any], resolve: Resolve | None, *, name: str | None = None,
           given: Mapping[str, Any] | None = None, _stack: tuple[str, ...] = ()) -> dict[str, Any]:
    """The spec with every `pipeline` node replaced by its child's nodes (ids `<node>.<child>`), with explicit
    edges; a spec without one is returned as is. `name`: the registered pipeline this spec is a version of (when
    registering it), so that a child running it is a cycle; `given`: the run's values of its params (a pipeline
    node may pass them on: `params: {params: {k: "{{ params.k }}"}}`). SpecError: a child that is missing,
    invalid, or runs one of its own ancestors (a cycle through registered pipelines), or nesting deeper than
    MAX_NESTING."""
    if name is not None and not _stack:
        _stack = (name,)
    if not has_pipelines(raw):
        return dict(raw)
    values = _values(raw, given)  # this spec's params, resolved (problems: reported by its own validation)
    nodes: list[Any] = raw["nodes"]
    edges = raw.get("edges")
    edge_pairs = [(e.get("from"), e.get("to")) for e in (derive_edges(raw) if edges is None else edges)
                  if isinstance(e, Mapping)]
    out_nodes: list[Any] = []
    ends: dict[str, tuple[list[str], list[str]]] = {}  # pipeline node -> (its child's roots, sinks), prefixed
    inner_edges: list[tuple[str, str]] = []
    problems: list[Problem] = []
    for index, node in enumerate(nodes):
        if not (isinstance(node, Mapping) and node.get("kind") == PIPELINE_KIND):
            out_nodes.append(node)
            continue
        where = f"nodes[{index}]"
        try:
            child_raw, label = _child(node, resolve, where, _stack)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        params = node.get("params") or {}
        passed = params.get("params")
        passed = substitute(passed, values) if values and isinstance(passed, Mapping) else passed
        try:
            inner = expand(child_raw, resolve, given=passed if isinstance(passed, Mapping) else None,
                           _stack=(*_stack, label))
            child = _without_inputs(load_spec(_with_inputs(inner, node.get("ins") or [])))
        except SpecError as exc:  # located inside the child: `nodes[1].pipeline[daily].nodes[0].kind`
            problems.extend(Problem(p.code, f"{where}.pipeline[{label}].{p.where}", p.message, p.fix)
                            for p in exc.problems)
            continue
        prefix = f"{node['id']}."
        child_values, param_problems = resolve_params(child.params, passed, f"{where}.params.params")
        problems.extend(param_problems)
        produced = {out for child_node in child.nodes for out in child_node.outs}
        for k, out in enumerate(node.get("outs") or []):
            if out not in produced:
                problems.append(Problem(ErrorCode.SPEC_UNWIRED_INPUT, f"{where}.outs[{k}]",
                                        f"pipeline {label!r} produces no out {out!r}",
                                        f"name one of its outs: {', '.join(sorted(produced)) or '(none)'}"))
        parents = {e.to: e for e in child.edges}
        ids = {child_node.id for child_node in child.nodes}
        roots = [n.id for n in child.nodes if n.id not in parents]
        sinks = [n.id for n in child.nodes if not any(e.from_ == n.id for e in child.edges)]
        for child_node in child.nodes:
            entry = child_node.model_dump(mode="json", by_alias=True, exclude_defaults=True)
            entry["id"] = prefix + child_node.id
            if child_node.params and child_values:
                entry["params"] = substitute(child_node.params, child_values)
            condition = child_node.when and _rewrite(child_node.when, child_values, ids, child)
            if child_node.id in roots and node.get("when"):  # the pipeline node's condition guards its roots
                condition = f"({node['when']}) and ({condition})" if condition else node["when"]
            if condition:
                entry["when"] = condition
            if child_node.id in roots and node.get("on_skipped"):
                entry["on_skipped"] = node["on_skipped"]
            out_nodes.append(entry)
        inner_edges.extend((prefix + e.from_, prefix + e.to) for e in child.edges)
        ends[node["id"]] = ([prefix + r for r in roots], [prefix + s for s in sinks])
    if problems:
        raise SpecError.from_problems(problems)
    pairs: list[tuple[Any, Any]] = []  # the parent's edges as written: load_spec reports a malformed one
    for src, dst in edge_pairs:
        sources = ends[src][1] if src in ends else [src]
        targets = ends[dst][0] if dst in ends else [dst]
        pairs.extend((s, t) for s in sources for t in targets)
    pairs.extend(inner_edges)
    return {**raw, "nodes": out_nodes, "edges": [{"from": s, "to": t} for s, t in dict.fromkeys(pairs)]}


def _values(raw: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """A raw spec's params resolved with `given` as far as they are valid (its validation reports the rest)."""
    declared: dict[str, ParamSpec] = {}
    for param, spec in (raw.get("params") or {}).items() if isinstance(raw.get("params"), Mapping) else ():
        try:
            declared[param] = ParamSpec.model_validate(spec)
        except ValueError:
            continue
    values, _ = resolve_params(declared, {k: v for k, v in (given or {}).items() if k in declared})
    return values


_INPUTS = "fabric-inputs"  # a stand-in for the parent's nodes while a child is validated: it makes the node's ins


def _with_inputs(child: Mapping[str, Any], ins: list[Any]) -> dict[str, Any]:
    """The child with a stand-in node producing what the pipeline node's `ins` pass in, upstream of its roots."""
    outs = list(dict.fromkeys(str(i).partition("=")[2] or str(i) for i in ins))
    if not outs:
        return dict(child)
    given = child.get("nodes")
    nodes: list[Any] = given if isinstance(given, list) else []
    stand_in = {"id": _INPUTS, "kind": "python_task", "entrypoint": "fabric:inputs", "outs": outs}
    edges = child.get("edges")
    if isinstance(edges, list):
        targets = {e.get("to") for e in edges if isinstance(e, Mapping)}
        roots = [n["id"] for n in nodes if isinstance(n, Mapping) and n.get("id") not in targets]
        edges = [*edges, *({"from": _INPUTS, "to": r} for r in roots)]
    return {**child, "nodes": [*nodes, stand_in], "edges": edges}  # last: problems keep the child's indices


def _without_inputs(child: DagSpec) -> DagSpec:
    if not child.nodes or child.nodes[-1].id != _INPUTS:
        return child
    return child.model_copy(update={"nodes": child.nodes[:-1], "edges": [e for e in child.edges if e.from_ != _INPUTS]})


def _child(node: Mapping[str, Any], resolve: Resolve | None, where: str, stack: tuple[str, ...]
           ) -> tuple[Mapping[str, Any], str]:
    """The raw child spec of a pipeline node, and the name it goes by in a cycle's message."""
    def fail(field: str, message: str, fix: str, code: ErrorCode = ErrorCode.KIND_PARAMS) -> SpecError:
        return SpecError.from_problems([Problem(code, f"{where}{field}", message, fix)])

    extra = sorted(set(node) - _FIELDS)
    if extra:
        raise fail(f".{extra[0]}", f"a pipeline node takes no {extra[0]!r}: its child's nodes carry their own",
                   f"allowed here: {', '.join(sorted(_FIELDS))}", ErrorCode.SPEC_UNKNOWN_FIELD)
    params = node.get("params") or {}
    if not isinstance(params, Mapping) or sorted(set(params) - _PARAMS):
        raise fail(".params", "a pipeline node's params are pipeline, version, spec and params",
                   "e.g. params: {pipeline: daily_factors, params: {as_of: '2025-01-31'}}")
    if len(stack) >= MAX_NESTING:
        raise fail("", f"pipelines nest deeper than {MAX_NESTING}: {' -> '.join(stack)}",
                   "flatten some of them")
    name, spec = params.get("pipeline"), params.get("spec")
    if (name is None) == (spec is None):
        raise fail(".params", "a pipeline node names a registered pipeline (params.pipeline) or gives an inline "
                   "sub-spec (params.spec), exactly one", "set params.pipeline: <registered pipeline id>")
    if spec is not None:
        if not isinstance(spec, Mapping):
            raise fail(".params.spec", "params.spec is a DAG spec (a mapping)", "give version, pipeline_id, nodes")
        return spec, f"{node.get('id')} (inline)"
    version = params.get("version")
    if not isinstance(name, str) or (version is not None and (type(version) is not int)):
        raise fail(".params.pipeline", "params.pipeline is a registered pipeline's id, params.version an integer",
                   "see `fabric pipeline ls`")
    if name in stack:
        raise fail(".params.pipeline", f"cycle through registered pipelines: {' -> '.join((*stack, name))}",
                   "a pipeline cannot run itself, directly or through another", ErrorCode.SPEC_CYCLE)
    if resolve is None:
        raise fail(".params.pipeline", f"registered pipeline {name!r} cannot be looked up here",
                   "submit it to a registry (fabric run, fabric submit), or give the sub-spec inline (params.spec)")
    try:
        return resolve(name, version), name
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - NotFoundError and the like: the team has no such pipeline
        raise fail(".params.pipeline", f"no registered pipeline {name!r}"
                   + (f" version {version}" if version is not None else "") + f" for this team ({exc})",
                   "register it first (`fabric pipeline register`), or give the sub-spec inline") from None


def _rewrite(when: str, values: Mapping[str, Any], ids: set[str], child: DagSpec) -> str:
    """A child's condition in the parent: its params become their values, `node.out` becomes `out`."""
    outs = {out for n in child.nodes for out in n.outs}

    def walk(tree: Expr) -> Expr:
        if isinstance(tree, Name):
            if tree.parts[0] == "params" and len(tree.parts) > 1 and tree.parts[1] in values:
                value: Any = values[tree.parts[1]]
                for key in tree.parts[2:]:
                    value = value[key] if isinstance(value, Mapping) and key in value else None
                return Lit(value)
            if tree.parts[0] in ids and tree.parts[0] not in outs and len(tree.parts) > 1:
                return Name(tree.parts[1:])
            return tree
        if isinstance(tree, ListOf):
            return ListOf(tuple(walk(i) for i in tree.items))
        if isinstance(tree, Not):
            return Not(walk(tree.operand))
        if isinstance(tree, BoolOp):
            return BoolOp(tree.op, tuple(walk(o) for o in tree.operands))
        if isinstance(tree, Compare):
            return Compare(tree.op, walk(tree.left), walk(tree.right))
        return tree

    try:
        return unparse(walk(parse(when)))
    except ExprError:
        return when  # a value a condition cannot hold: left as written, so the parent's check reports it
