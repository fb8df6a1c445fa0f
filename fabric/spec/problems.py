"""Conversion of pydantic validation errors into fabric Problems with a path, a reason and a fix."""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from fabric.errors import MAX_PROBLEMS, ErrorCode, Problem
from fabric.spec._text import did_you_mean, join_path
from fabric.spec.kinds import KNOWN_KINDS
from fabric.spec.quantities import QuantityError

_SCHEMA_HINT = "see fabric.spec.dag_json_schema() for what is allowed here"


def _strip(tp: Any) -> Any:
    """Drop Annotated and None from a type: Annotated[X, ...] | None -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(model: type[BaseModel], path: Sequence[Any]) -> type[BaseModel] | None:
    """The model class found at `path` inside `model` (following fields, list items and dict values)."""
    tp: Any = model
    for part in path:
        tp = _strip(tp)
        origin = typing.get_origin(tp)
        if isinstance(part, int) and origin is list:
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for name, f in tp.model_fields.items() if part in (name, f.alias)), None)
            if field is None:
                return None
            tp = field.annotation
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _fix_for(kind: str, loc: tuple[Any, ...], ctx: dict[str, Any]) -> str:
    simple = {
        "string_type": "use a string (quote it in YAML)",
        "int_type": "use a whole number",
        "int_parsing": "use a whole number",
        "int_from_float": "use a whole number",
        "float_type": "use a number",
        "float_parsing": "use a number",
        "bool_type": "use true or false",
        "bool_parsing": "use true or false",
        "dict_type": "use a mapping, e.g. {key: value}",
        "model_type": "use a mapping, e.g. {key: value}",
        "model_attributes_type": "use a mapping, e.g. {key: value}",
        "list_type": "use a list, e.g. [a, b]",
        "string_too_short": "use a non-empty string",
    }
    if kind in simple:
        return simple[kind]
    if kind == "missing":
        return f"add the required field {loc[-1]!r}" if loc else "add the missing field"
    if kind in ("literal_error", "enum"):
        return f"use {ctx.get('expected', 'an allowed value')}"
    if kind == "too_short":
        return f"give at least {ctx.get('min_length', 1)} item(s)"
    if kind == "too_long":
        return f"give at most {ctx.get('max_length')} item(s)"
    if kind == "string_too_long":
        return f"use at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        return f"match the pattern {ctx.get('pattern')}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()), "")
        return f"use a value {bounds[kind]} {limit}"
    return _SCHEMA_HINT


def problems_from_validation_error(exc: ValidationError, model: type[BaseModel],
                                   code: ErrorCode = ErrorCode.SPEC_FIELD, prefix: str = "") -> list[Problem]:
    """One Problem per pydantic error; `where` is a path like `nodes[2].resources.cpu` (after `prefix`)."""
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        kind = error["type"]
        ctx = error.get("ctx") or {}
        message = str(error["msg"]).removeprefix("Value error, ")
        where = join_path(loc)
        if prefix:
            where = f"{prefix}.{where}" if where and not where.startswith("[") else prefix + where
        problem_code = code
        fix = str(ctx.get("fix", ""))
        cause = ctx.get("error")
        listed = len(problems) < MAX_PROBLEMS  # hints only for the problems an error lists
        if kind == "extra_forbidden":
            problem_code = ErrorCode.SPEC_UNKNOWN_FIELD
            owner = _model_at(model, loc[:-1])
            name = str(loc[-1])[:200] if loc else ""
            message = f"unknown field {name!r}"
            if owner is not None:
                allowed = _field_names(owner)
                hint = did_you_mean(name, allowed) if listed else ""
                fix = f"{hint}allowed fields here: {', '.join(allowed)}"
            else:
                fix = "remove it"
        elif isinstance(cause, QuantityError) or kind == "spec_quantity":
            problem_code = ErrorCode.SPEC_QUANTITY
            fix = fix or getattr(cause, "fix", "")
        elif kind == "spec_condition":
            problem_code = ErrorCode.SPEC_CONDITION
        elif kind == "unknown_kind":
            problem_code = ErrorCode.SPEC_UNKNOWN_KIND
            hint = did_you_mean(str(ctx.get("kind", "")), KNOWN_KINDS) if listed else ""
            message += f" ({hint.strip()})" if hint else ""
            fix = f"{hint}known kinds: {', '.join(sorted(KNOWN_KINDS))}"
        if not fix:
            fix = _fix_for(kind, loc, ctx)
        problems.append(Problem(problem_code, where, message, fix))
    return problems
