"""A Tune search space written in a spec: `{param: {choice|grid|uniform|loguniform|randint: ...}}`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint")


def space_problems(space: Any) -> list[tuple[str, str]]:
    """(param, message) for every malformed entry; pure, for submit-time checks."""
    if not isinstance(space, Mapping) or not space:
        return [("", "search_space must be a non-empty mapping of param -> {choice|grid|uniform|loguniform|"
                     "randint: ...}")]
    problems = []
    for name, domain in space.items():
        if not isinstance(domain, Mapping) or len(domain) != 1 or next(iter(domain)) not in DOMAINS:
            problems.append((name, f"{name!r} must be one of {{{'|'.join(DOMAINS)}: ...}}, not {domain!r}"))
            continue
        (how, values), = domain.items()
        if how in ("choice", "grid"):
            if not isinstance(values, list) or not values:
                problems.append((name, f"{name}.{how} must be a non-empty list"))
        elif (not isinstance(values, list) or len(values) != 2
              or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
              or not values[0] < values[1]):
            problems.append((name, f"{name}.{how} must be [low, high] with low < high"))
        elif how == "loguniform" and values[0] <= 0:
            problems.append((name, f"{name}.loguniform needs low > 0"))
        elif how == "randint" and not all(isinstance(v, int) for v in values):
            problems.append((name, f"{name}.randint needs integer bounds"))
    return problems


def is_grid(space: Mapping[str, Any]) -> bool:
    return all(next(iter(domain)) == "grid" for domain in space.values())


def to_tune(space: Mapping[str, Any]) -> dict[str, Any]:
    """The space as Ray Tune domains (call only after `space_problems` found nothing)."""
    from ray import tune

    make = {"choice": tune.choice, "grid": tune.grid_search,
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
            "randint": lambda v: tune.randint(v[0], v[1] + 1)}  # inclusive bounds, as written
    return {name: make[how](values) for name, domain in space.items() for how, values in domain.items()}
