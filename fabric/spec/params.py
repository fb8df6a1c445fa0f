"""Pipeline parameters: typed declarations with defaults, `{{ params.NAME }}` references, and their resolution."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic_core import PydanticCustomError

from fabric.errors import ErrorCode, Problem

PARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# `{{ params.as_of }}`: a whole string that is one reference becomes the typed value; a reference inside a
# longer string is replaced by the value's text.
REFERENCE = re.compile(r"\{\{\s*params\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
MAX_LIST_ITEMS = 10_000


class ParamType(StrEnum):
    """The types a pipeline parameter may have; a date is an ISO `YYYY-MM-DD` string."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"
    LIST = "list"


class ParamTypeError(ValueError):
    """A value that is not of its parameter's type; the message says what was expected."""


def _date(value: Any) -> str:
    if isinstance(value, dt.datetime):
        raise ParamTypeError(f"expected a date (YYYY-MM-DD), got a datetime {value.isoformat()!r}")
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ParamTypeError(f"expected a date as 'YYYY-MM-DD', got {value!r}")
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise ParamTypeError(f"{value!r} is not a calendar date: {exc}") from None


def coerce(kind: ParamType, value: Any, items: ParamType | None = None) -> Any:
    """`value` as a JSON-able value of type `kind` (lossless widenings only: an int is a float); else
    ParamTypeError. A bool is never an int or a float, and a string is never a number."""
    if kind is ParamType.STRING:
        if not isinstance(value, str):
            raise ParamTypeError(f"expected a string, got {type(value).__name__} {value!r}")
        return value
    if kind is ParamType.INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamTypeError(f"expected an integer, got {type(value).__name__} {value!r}")
        return value
    if kind is ParamType.FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ParamTypeError(f"expected a finite number, got {type(value).__name__} {value!r}")
        return float(value)
    if kind is ParamType.BOOL:
        if not isinstance(value, bool):
            raise ParamTypeError(f"expected true or false, got {type(value).__name__} {value!r}")
        return value
    if kind is ParamType.DATE:
        return _date(value)
    if not isinstance(value, list | tuple):
        raise ParamTypeError(f"expected a list, got {type(value).__name__} {value!r}")
    if len(value) > MAX_LIST_ITEMS:
        raise ParamTypeError(f"the list has {len(value)} items, more than {MAX_LIST_ITEMS}")
    out = []
    for i, item in enumerate(value):
        if items is None:
            if item is not None and not isinstance(item, str | int | float | bool):
                raise ParamTypeError(f"item {i}: a list parameter holds strings, numbers or booleans, "
                                     f"got {type(item).__name__}")
            out.append(item)
            continue
        try:
            out.append(coerce(items, item))
        except ParamTypeError as exc:
            raise ParamTypeError(f"item {i}: {exc}") from None
    return out


class ParamSpec(BaseModel):
    """One declared parameter: its type, and a default (without one, every run must set it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParamType
    default: JsonValue = Field(None, description="The value when a run does not set it; omit it to make the "
                                                 "parameter required.")
    items: ParamType | None = Field(None, description="For a list: the type of every item.")
    description: str | None = None

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.items is not None and (self.type is not ParamType.LIST or self.items is ParamType.LIST):
            raise PydanticCustomError(
                "spec_value", "items is the item type of a list parameter (string, int, float, bool or date)",
                {"fix": "remove items, or set type: list and items to a scalar type"})
        if not self.required:
            try:
                coerce(self.type, self.default, self.items)
            except ParamTypeError as exc:
                raise PydanticCustomError("spec_value", "default does not match type {type}: {error}",
                                          {"type": str(self.type), "error": str(exc),
                                           "fix": f"give a default of type {self.type}, or remove it"}) from None
        return self

    def resolve(self, value: Any) -> Any:
        """The value coerced to this parameter's type (ParamTypeError if it is not of it)."""
        return coerce(self.type, value, self.items)


def references(value: Any) -> set[str]:
    """Every parameter name that `value` (node params: nested dicts, lists, strings) refers to."""
    found: set[str] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, str):
            found.update(REFERENCE.findall(current))
        elif isinstance(current, Mapping):
            stack.extend(current.values())
        elif isinstance(current, list | tuple):
            stack.extend(current)
    return found


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def substitute(value: Any, resolved: Mapping[str, Any]) -> Any:
    """`value` with every reference replaced: a string that is exactly one reference becomes the typed value,
    a reference inside a longer string becomes the value's text (JSON for numbers, booleans and lists).
    Names not in `resolved` are left as written."""
    if isinstance(value, str):
        if "{{" not in value:
            return value
        whole = REFERENCE.fullmatch(value.strip())
        if whole and whole.group(1) in resolved:
            return resolved[whole.group(1)]
        return REFERENCE.sub(lambda m: _text(resolved[m.group(1)]) if m.group(1) in resolved else m.group(0), value)
    if isinstance(value, Mapping):
        return {k: substitute(v, resolved) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [substitute(v, resolved) for v in value]
    return value


def reference_problems(raw: Mapping[str, Any]) -> list[Problem]:
    """A node param that refers to an undeclared parameter (on the raw spec; tolerates malformed parts)."""
    declared = raw.get("params")
    names = set(declared) if isinstance(declared, Mapping) else set()
    nodes = raw.get("nodes")
    problems = []
    for i, node in enumerate(nodes if isinstance(nodes, list) else []):
        if not isinstance(node, Mapping) or not isinstance(node.get("params"), Mapping):
            continue
        for key, value in node["params"].items():
            if key == "spec" and node.get("kind") == "pipeline":
                continue  # an inline sub-pipeline's references are to its own params (fabric/spec/subdags.py)
            for name in sorted(references(value) - names):
                problems.append(Problem(
                    ErrorCode.PARAM_UNKNOWN, f"nodes[{i}].params.{key}",
                    f"refers to parameter {name!r}, which the pipeline does not declare",
                    f"declare it under params: {{{name}: {{type: string, default: ...}}}}, or fix the name"
                    + (f" (declared: {', '.join(sorted(names))})" if names else "")))
    return problems


def resolve_params(declared: Mapping[str, ParamSpec], given: Mapping[str, Any] | None,
                   where: str = "runtime_params.params") -> tuple[dict[str, Any], list[Problem]]:
    """Every declared parameter's value (the given one coerced to its type, else its default) and the
    problems: a given name not declared, a value of the wrong type, a required parameter not given."""
    given = dict(given or {})
    resolved: dict[str, Any] = {}
    problems: list[Problem] = []
    for name in given:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(Problem(ErrorCode.PARAM_UNKNOWN, f"{where}.{name}",
                                    f"the pipeline has no parameter {name!r}",
                                    f"set only declared parameters (declared: {known})"))
    for name, spec in declared.items():
        if name in given:
            try:
                resolved[name] = spec.resolve(given[name])
            except ParamTypeError as exc:
                problems.append(Problem(ErrorCode.PARAM_TYPE, f"{where}.{name}",
                                        f"parameter {name!r} is a {spec.type}: {exc}",
                                        f"give {name} a value of type {spec.type}"))
        elif spec.required:
            problems.append(Problem(ErrorCode.PARAM_REQUIRED, f"{where}.{name}",
                                    f"parameter {name!r} has no default and was not set",
                                    f"set {where}.{name} (a {spec.type})"))
        else:
            resolved[name] = spec.resolve(spec.default)
    return resolved, problems
