"""What a node's `when:` reads: each name resolved to a pipeline param or an upstream out, and the problems of
names that resolve to nothing (pure; the grammar is fabric/spec/expr.py)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fabric.errors import ErrorCode, Problem
from fabric.spec.expr import ExprError, Name, names, parse

WHEN_INPUT = "?"  # the plan's input wires that feed a condition are named "?<key>": never a keyword argument


@dataclass(frozen=True)
class WhenSource:
    """Where a name's value comes from: `key` is the part of the name it stands for ("best_sharpe",
    "pick.best_sharpe"), the rest of the name is keys into the value; producer None: the pipeline param `out`."""

    key: str
    producer: str | None
    out: str

    @property
    def consumed(self) -> int:
        return self.key.count(".") + 1 if self.producer is not None else 2


def resolve(name: Name, ancestors: Collection[str], producers: Mapping[str, Sequence[str]],
            outs: Mapping[str, Sequence[str]], params: Collection[str]) -> WhenSource | tuple[str, str]:
    """The source of `name` for a node whose ancestors are `ancestors`, or (why not, fix). An upstream out's name
    comes first, then an upstream node's id followed by one of its outs, then `params.NAME`."""
    root, parts = name.parts[0], name.parts
    if root == "params":
        if len(parts) < 2 or parts[1] not in params:
            known = ", ".join(sorted(params)[:20]) or "none"
            what = f"params.{parts[1]} is not a declared pipeline param" if len(parts) > 1 else \
                "`params` alone is not a value"
            return what, f"name a declared param (declared: {known}), or declare it under the spec's params"
        return WhenSource("params", None, parts[1])
    upstream = [p for p in producers.get(root, ()) if p in ancestors]
    if len(upstream) == 1:
        return WhenSource(root, upstream[0], root)
    if len(upstream) > 1:
        return (f"{root!r} is produced by several upstream nodes ({', '.join(upstream[:5])})",
                f"say which one: {upstream[0]}.{root}")
    if root in ancestors:
        node_outs = list(outs.get(root, ()))
        if len(parts) < 2 or parts[1] not in node_outs:
            got = f" has no out {parts[1]!r}" if len(parts) > 1 else " is a node, not a value"
            return f"upstream node {root!r}{got}", f"name one of its outs: {', '.join(node_outs) or '(it has none)'}"
        return WhenSource(f"{root}.{parts[1]}", root, parts[1])
    hint = " (it is produced by a node that is not upstream: add an edge)" if root in producers else ""
    return (f"unknown name {root!r}{hint}",
            "use an out of an upstream node (best_sharpe), an upstream node's out (pick.best_sharpe) or params.NAME")


def sources(when: str, ancestors: Collection[str], producers: Mapping[str, Sequence[str]],
            outs: Mapping[str, Sequence[str]], params: Collection[str]) -> list[WhenSource]:
    """Every source a valid condition reads, each once (the spec was validated: every name resolves)."""
    found: dict[WhenSource, None] = {}
    for name in names(parse(when)):
        source = resolve(name, ancestors, producers, outs, params)
        if isinstance(source, WhenSource):
            found[source] = None
    return list(found)


def when_roots(node: Mapping[str, Any]) -> list[str]:
    """The first parts of the names a raw node's condition reads (an out or a node id; not `params`): with edges
    omitted, each one's producer becomes an edge to the node. Empty when it has none or it does not parse."""
    when = node.get("when")
    try:
        tree = parse(when) if isinstance(when, str) else None
    except ExprError:
        return []
    return list(dict.fromkeys(n.parts[0] for n in names(tree) if n.parts[0] != "params")) if tree else []


def condition_problems(raw: Mapping[str, Any], ancestors_of: Callable[[str], Collection[str]]) -> list[Problem]:
    """Names in `when:` that resolve to nothing; `on_skipped: run` beside `cache` (its cache key would read the
    data of a node that never ran). A `when` that does not parse is the model's field problem."""
    nodes = [n for n in raw.get("nodes") or [] if isinstance(n, Mapping)] if isinstance(raw.get("nodes"), list) else []
    producers: dict[str, list[str]] = {}
    outs: dict[str, list[str]] = {}
    for node in nodes:
        if isinstance(node.get("id"), str) and isinstance(node.get("outs"), list):
            outs[node["id"]] = [o for o in node["outs"] if isinstance(o, str)]
            for out in outs[node["id"]]:
                producers.setdefault(out, []).append(node["id"])
    declared = raw.get("params")
    params = list(declared) if isinstance(declared, Mapping) else []
    problems: list[Problem] = []
    for index, node in enumerate(raw.get("nodes") or []):
        if not isinstance(node, Mapping) or not isinstance(node.get("id"), str):
            continue
        if node.get("on_skipped") == "run" and node.get("cache"):
            problems.append(Problem(ErrorCode.SPEC_CONDITION, f"nodes[{index}].on_skipped",
                                    "on_skipped: run cannot be combined with cache (a skipped input has no data to key "
                                    "the cache by)", "remove cache from this node, or on_skipped"))
        when = node.get("when")
        if not isinstance(when, str):
            continue
        try:
            tree = parse(when)
        except ExprError:
            continue  # reported by the model, with the syntax error
        ancestors = set(ancestors_of(node["id"]))
        for name in names(tree):
            source = resolve(name, ancestors, producers, outs, params)
            if not isinstance(source, WhenSource):
                problems.append(Problem(ErrorCode.SPEC_CONDITION, f"nodes[{index}].when", source[0], source[1]))
    return problems
