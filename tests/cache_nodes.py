"""Node functions for the cache tests (`tests.cache_nodes:...`): each execution leaves a marker file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fabric.context import context


def _mark(marker_dir: str, name: str) -> None:
    path = Path(marker_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}.{time.time_ns()}").write_text("ran")


def read_text(path: str, marker_dir: str) -> str:
    """Not cached: reads whatever the file holds now (same name, maybe other data)."""
    _mark(marker_dir, "read")
    return Path(path).read_text()


def count_words(text: str, marker_dir: str) -> dict:
    _mark(marker_dir, "count")
    (context().artifact_dir / "metrics.json").write_text(json.dumps({"words": len(text.split())}))
    return {"words": len(text.split()), "text": text}


def shout(counts: dict) -> str:
    return counts["text"].upper()


def slow_double(x: float, seconds: float, marker_dir: str) -> float:
    _mark(marker_dir, "slow")
    time.sleep(seconds)
    return 2 * x


def listed(values: list, offset: int) -> dict:
    """Not cached: the map's items, and its other input."""
    return {"values": list(values), "offset": offset}


def square_item(item: int, offset: int, marker_dir: str) -> int:
    _mark(marker_dir, f"square{item}")
    return item * item + offset


def collect(squares: list) -> list:
    return list(squares)
