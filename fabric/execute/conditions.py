"""A node's condition and its skipped inputs, decided in its worker before its code runs (a map node's, in its
count task, before it expands): run it, skip it, or fail it (a condition that cannot be evaluated on the values
it got)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fabric.kinds import NodeCall
from fabric.spec.conditions import WHEN_INPUT
from fabric.spec.expr import ConditionError, Name, dig, evaluate, parse


class Skipped:
    """The value of each out of a SKIPPED node, and what a node gets for an input whose producer was SKIPPED."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (Skipped, (self.node_id,))

    def __repr__(self) -> str:
        return f"Skipped({self.node_id!r})"


@dataclass(frozen=True)
class Condition:
    """What decides whether a node runs, apart from its values: a map node's count task gets it (an ordinary
    node's worker reads the same fields from its NodeCall)."""

    when: str | None
    when_params: Mapping[str, Any] = field(default_factory=dict)
    on_skipped: str = "skip"


def gate(call: NodeCall, values: Sequence[Any]) -> tuple[dict[str, Any], str]:
    """The keyword arguments of the node's code (condition values and skipped inputs left out) and why the node is
    skipped ("" when it runs). A value from a SKIPPED node reads as null in the condition. ConditionError when
    the condition cannot be evaluated on these values."""
    return decide(Condition(call.when, call.when_params, call.on_skipped), call.input_names, values)


def decide(condition: Condition, names: Sequence[str], values: Sequence[Any]) -> tuple[dict[str, Any], str]:
    """`gate` on the inputs `names` (condition values named `WHEN_INPUT<key>`) with `values`, in that order."""
    named: dict[str, Any] = {}
    when_values: dict[str, Any] = {}
    skipped_from: dict[str, None] = {}
    for name, value in zip(names, values, strict=True):
        if name.startswith(WHEN_INPUT):
            when_values[name[len(WHEN_INPUT):]] = None if isinstance(value, Skipped) else value
        elif isinstance(value, Skipped):
            skipped_from[value.node_id] = None
        else:
            named[name] = value
    if skipped_from and condition.on_skipped != "run":
        return named, f"upstream {', '.join(skipped_from)} skipped"
    when = condition.when
    if when and not evaluate(parse(when), partial(_lookup, condition.when_params, when_values)):
        return named, f"when is false: {when}"
    return named, ""


def _lookup(params: Mapping[str, Any], values: Mapping[str, Any], name: Name) -> Any:
    if name.parts[0] == "params":
        return dig(params, name, 1)
    if name.parts[0] in values:
        return dig(values[name.parts[0]], name, 1)
    key = ".".join(name.parts[:2])
    if key in values:
        return dig(values[key], name, 2)
    raise ConditionError(f"{name.dotted}: no value was wired for it (a fabric bug: please report it)")
