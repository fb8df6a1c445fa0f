"""A node's `map:` (fan-out over a list known at run time): its model, its submit-time checks, child ids."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fabric.errors import ErrorCode, Problem

# A map's children are its id and an index: `sweep[0]`, `sweep[41]` (status, logs, the API, the UI).
CHILD_ID_RE = re.compile(r"^(?P<parent>[A-Za-z][A-Za-z0-9_-]{0,63})\[(?P<index>0|[1-9][0-9]{0,6})\]$")
MAX_MAP_ITEMS = 100_000  # a larger list fails the map node at run time, naming its input


class MapSpec(BaseModel):
    """`map: {over: items}`: one child per item of input `items` (or per batch of `batch_size` items)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    over: str = Field(min_length=1, max_length=64,
                      description="One of the node's inputs (its keyword argument name): a list, or a table whose "
                                  "rows are the items.")
    max_parallel: int | None = Field(None, ge=1, le=MAX_MAP_ITEMS,
                                     description="At most this many children run at once (default: no limit).")
    min_success_ratio: float | None = Field(
        None, gt=0, le=1, description="The map succeeds when at least this share of its items succeeded; downstream "
                                      "then gets the successes only (default: every item must succeed).")
    batch_size: int | None = Field(None, ge=1, le=MAX_MAP_ITEMS,
                                   description="Items per child: each child calls the function once per item of its "
                                               "batch, in one Ray task (default 1).")


def child_id(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


def parent_of(node_id: str) -> tuple[str, int] | None:
    """(map node, index) of a child id like `sweep[3]`; None for a plain node id."""
    match = CHILD_ID_RE.match(node_id)
    return (match["parent"], int(match["index"])) if match else None


def map_problems(raw: Mapping[str, Any]) -> list[Problem]:
    """`map.over` must name one of the node's own inputs (on the raw spec: malformed nodes are tolerated)."""
    nodes = raw.get("nodes")
    problems = []
    for i, node in enumerate(nodes if isinstance(nodes, list) else []):
        spec = node.get("map") if isinstance(node, Mapping) else None
        over = spec.get("over") if isinstance(spec, Mapping) else None
        if not isinstance(over, str):
            continue
        ins = node.get("ins") if isinstance(node.get("ins"), list) else []
        names = [entry.partition("=")[0] for entry in ins if isinstance(entry, str)]
        if over not in names:
            listed = ", ".join(repr(n) for n in names) or "none"
            problems.append(Problem(
                ErrorCode.SPEC_FIELD, f"nodes[{i}].map.over",
                f"map.over {over[:64]!r} is not one of the inputs of node {str(node.get('id'))[:64]!r} "
                f"(its ins: {listed})",
                "name the input to fan out over, as listed in ins (the keyword argument of `param=out`)"))
    return problems
