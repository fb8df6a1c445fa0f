"""Small text helpers for spec error messages: did-you-mean suggestions and path formatting."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most like `word`, or None when nothing is close."""
    matches = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """"did you mean 'x'? " or "" when no choice is close."""
    best = closest(word, choices)
    return f"did you mean {best!r}? " if best else ""


def join_path(parts: Sequence[Any]) -> str:
    """Render a location like ("nodes", 2, "resources", "cpu") as "nodes[2].resources.cpu"."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{str(part)!r}]"
    return out
