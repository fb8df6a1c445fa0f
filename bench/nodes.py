"""Node bodies shared by the benchmarks' fabric and raw-Ray runs, so both do the same work."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


def noop(**_: Any) -> None:
    return None


def big_table(megabytes: int = 50) -> pa.Table:
    rows = megabytes * 2**20 // 8
    return pa.table({"x": np.arange(rows, dtype=np.float64)})


def consume(table: pa.Table) -> dict[str, Any]:
    """Reads every value; reports whether the column is a zero-copy view of the object store."""
    buffer = table.column("x").chunk(0).buffers()[1]
    return {"sum": float(np.frombuffer(buffer, dtype=np.float64).sum()), "zero_copy": not buffer.is_mutable}


def sleep_for(seconds: float) -> tuple[float, float]:
    """A stand-in for GPU work: holds its resources for `seconds`; returns when it really ran."""
    import time

    started = time.time()
    time.sleep(seconds)
    return started, time.time()


def items(n: int = 10_000) -> list[int]:
    """The list a map fans out over (bench/map.py)."""
    return list(range(n))


def noop_item(item: Any) -> None:
    """One map child's work: nothing."""


def count(results: list[Any]) -> int:
    return len(results)
