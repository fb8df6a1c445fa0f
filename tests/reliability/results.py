"""Figures from the reliability tests, appended as JSON lines for scripts/reliability_report.py.

One file for a whole run: `$FABRIC_RELIABILITY_OUT`, or `.reliability/results.jsonl` at the repo root.
Each line is one figure set, keyed by (section, name); the report keeps the newest line per key, so
re-running one module refreshes its rows without clearing the others.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("load", "fault", "bad_input", "isolation", "invariants", "property")


def out_file() -> Path:
    return Path(os.environ.get("FABRIC_RELIABILITY_OUT") or REPO / ".reliability" / "results.jsonl")


def record(section: str, name: str, **figures: Any) -> dict[str, Any]:
    """Append one result line; returns it. `figures` must be JSON-able (numbers rounded by the caller)."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; one of {SECTIONS}")
    line = {"section": section, "name": name, "at": round(time.time(), 3),
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
            "host": f"{platform.node()} ({os.cpu_count()} cpus)", **figures}
    path = out_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:  # one write per line: concurrent test processes do not interleave lines
        handle.write(json.dumps(line, sort_keys=False, default=str) + "\n")
    return line


def read(path: Path | None = None) -> list[dict[str, Any]]:
    """Every recorded line, oldest first (unreadable lines are skipped: a killed run may leave half a line)."""
    file = path or out_file()
    if not file.exists():
        return []
    lines = []
    for text in file.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines


def percentiles(values: list[float], points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles in milliseconds-agnostic units (whatever `values` are), plus max."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {f"p{p}": ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] for p in points}
    out["max"] = ordered[-1]
    return out
