"""Small text helpers for spec error messages: did-you-mean suggestions and path formatting."""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# difflib compares a word with every choice (tens of microseconds each): over thousands of node ids a
# Suggester first short-lists the choices that share the most trigrams with the word.
_SHORTLIST = 8
_BUDGET = 20_000  # trigram postings counted per question
_LONGEST = 128  # no suggestion for a longer word (ids and names are short)


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most like `word`, or None when nothing is close."""
    matches = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """"did you mean 'x'? " or "" when no choice is close."""
    best = closest(word, choices)
    return f"did you mean {best!r}? " if best else ""


def _grams(word: str) -> set[str]:
    padded = f" {word} "
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


class Suggester:
    """did_you_mean over one set of choices, asked many times (node ids, output names): the index is built
    once, in time linear in the choices, and a question costs about the size of its rarer trigrams' lists."""

    def __init__(self, choices: Iterable[str]) -> None:
        self._choices = sorted(set(choices))
        self._index: dict[str, list[int]] | None = None

    def __call__(self, word: str, exclude: str | None = None) -> str:
        pool = self._choices if len(self._choices) <= _SHORTLIST else self._shortlist(word)
        return did_you_mean(word, (c for c in pool if c != exclude))

    def _shortlist(self, word: str) -> list[str]:
        if len(word) > _LONGEST:
            return []
        if self._index is None:
            self._index = {}
            for i, choice in enumerate(self._choices):
                for gram in _grams(choice):
                    self._index.setdefault(gram, []).append(i)
        # Rarer trigrams say most about which choice was meant and cost least to count: count those first,
        # up to a fixed budget, so that a question costs the same however many choices there are.
        postings = sorted((self._index.get(gram, []) for gram in _grams(word)), key=len)
        counts: Counter[int] = Counter()
        budget = _BUDGET
        for posting in postings:
            if len(posting) > budget:
                break
            counts.update(posting)
            budget -= len(posting)
        return [self._choices[i] for i, _ in counts.most_common(_SHORTLIST)]


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
