"""Names in the spec: the patterns of ids and input/output names, their pydantic types with readable errors."""

from __future__ import annotations

import keyword
import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from fabric.spec.params import PARAM_NAME_PATTERN

NODE_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}(\.[A-Za-z][A-Za-z0-9_-]{0,63}){0,7}$"  # "." nests: sub.node
IO_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
PIPELINE_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$"
SUBMISSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
CUSTOM_RESOURCE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.:/-]{0,63}$"
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
ENTRYPOINT_PATTERN = f"^{_DOTTED}:{_DOTTED}$"


def fail(message: str, fix: str, error_type: str = "spec_value") -> PydanticCustomError:
    # The message is pre-rendered; `fix` travels in the context and becomes Problem.fix.
    return PydanticCustomError(error_type, message, {"fix": fix})


def _matching(pattern: str, what: str, rule: str, example: str) -> AfterValidator:
    """A check that a str matches `pattern`, with a readable error (the pattern goes in the JSON Schema)."""
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.match(value):
            raise fail(f"{value!r} is not a valid {what}: {rule}", f"use a name like {example!r}")
        return value

    return AfterValidator(check)


def _schema(pattern: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": pattern})


NodeId = Annotated[str, _matching(NODE_ID_PATTERN, "node id",
                                  "it must start with a letter, then letters, digits, '_' or '-' (at most 64); "
                                  "'.' only separates a sub-pipeline's node from its pipeline node (sub.node)",
                                  "compute_features"), _schema(NODE_ID_PATTERN)]
PipelineId = Annotated[str, _matching(PIPELINE_ID_PATTERN, "pipeline id",
                                      "it must start with a letter, then letters, digits, '_', '.' or '-' "
                                      "(at most 128)", "bt_xs_bilstm_v1"), _schema(PIPELINE_ID_PATTERN)]
SubmissionId = Annotated[str, _matching(SUBMISSION_ID_PATTERN, "submission id",
                                        "it must start with a letter or digit, then letters, digits, '_', '.', "
                                        "':' or '-' (at most 128)", "sub-2025-10-29-001"),
                         _schema(SUBMISSION_ID_PATTERN)]
Entrypoint = Annotated[str, _matching(ENTRYPOINT_PATTERN, "entrypoint", "it must look like 'package.module:function'",
                                      "my_pkg.features:compute"), _schema(ENTRYPOINT_PATTERN)]
ParamName = Annotated[str, _matching(PARAM_NAME_PATTERN, "parameter name",
                                     "it must start with a letter or '_', then letters, digits or '_' (at most 64)",
                                     "as_of"), _schema(PARAM_NAME_PATTERN)]
_IO_NAME_RE = re.compile(IO_NAME_PATTERN)


def _check_io_name(value: str) -> str:
    if not _IO_NAME_RE.match(value):
        raise fail(f"{value!r} is not a valid input/output name: it becomes a Python keyword argument, "
                    "so it must start with a letter or '_', then letters, digits or '_' (at most 64)",
                    "use a name like 'feature_table'")
    if keyword.iskeyword(value):
        raise fail(f"{value!r} is a Python keyword and cannot be used as an input/output name",
                    f"rename it, e.g. {value + '_'!r}")
    return value


IoName = Annotated[str, AfterValidator(_check_io_name),
                   WithJsonSchema({"type": "string", "pattern": IO_NAME_PATTERN})]


def split_input(entry: str) -> tuple[str, str]:
    """An `ins` entry is `name` or `param=name`: the keyword argument, and the upstream out it reads."""
    param, _, out = entry.partition("=")
    return (param, out) if out else (param, param)


def _check_input(value: str) -> str:
    param, out = split_input(value)
    _check_io_name(param)
    _check_io_name(out)
    return value


_IO = IO_NAME_PATTERN.strip("^$")
InputName = Annotated[str, AfterValidator(_check_input),
                      WithJsonSchema({"type": "string", "pattern": f"^{_IO}(={_IO})?$",
                                      "description": "an upstream out, or param=out to pass it under "
                                                     "another keyword argument"})]


def check_env_names(env: dict[str, str], what: str) -> dict[str, str]:
    """Env var names: well-formed, and never RAY_* (those configure Ray itself, for every node env)."""
    for name in env:
        if not re.match(ENV_VAR_PATTERN, name):
            raise fail(f"{name!r} is not a valid {what} name: use letters, digits and '_', not starting "
                        "with a digit", "rename it, e.g. 'FEATURE_VIEW'")
        if name.upper().startswith("RAY_"):
            raise fail(f"{what} {name!r} is not allowed: names starting with RAY_ "
                        "configure Ray itself and cannot be set by a submission",
                        f"remove {name!r} or rename it without the RAY_ prefix")
    return env
