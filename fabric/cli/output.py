"""`-o/--output json|yaml|table` for every read command: one option, one way to print data."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any

import typer
import yaml


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", case_sensitive=False,
                                           help="table (for people), json or yaml (for scripts)")]


def to_data(value: Any) -> Any:
    """Plain JSON-able data: objects with `to_dict()` become dicts, others pass through."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [to_data(item) for item in value]
    return value


def render(data: Any, output: Output) -> str:
    """JSON (indented, keys as given) or YAML text of plain data."""
    plain = json.loads(json.dumps(to_data(data), default=str))  # one normal form: datetimes, enums as text
    if output is Output.YAML:
        return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, width=1 << 30)
    return json.dumps(plain, indent=2) + "\n"


def emit(data: Any, output: Output, table: Callable[[], Any]) -> None:
    """Print `data` as JSON/YAML on plain stdout (never wrapped), or `table()` through the rich console."""
    if output is Output.TABLE:
        from fabric.cli.console import out

        out.print(table())
    else:
        sys.stdout.write(render(data, output))
        sys.stdout.flush()
