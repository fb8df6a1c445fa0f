"""`llm_generate` on Ray Data: the prompts (a table, or Parquet files read as a stream) through `map_batches` over an
actor pool of the node's size (`resources.workers` replicas of the node's CPUs/GPUs), the generated batches handed
back one at a time, in input order."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fabric.ml.genai.generate import Generator
from fabric.ml.genai.params import GenerateParams
from fabric.plan.model import ResourceUnit


def blocks(table: Any, batch_size: int, workers: int) -> list[Any]:
    """The table in blocks of whole batches (so each batch, and each merge, is the same on every run), about
    four per worker so that replicas share the work."""
    rows = table.num_rows
    per_block = max(1, math.ceil(rows / max(1, workers * 4) / batch_size)) * batch_size
    return [table.slice(start, per_block) for start in range(0, rows, per_block)] or [table]


def prompt_source(value: Any, workers: int, batch_size: int) -> Any:
    """A Ray Dataset of the prompts: an Arrow table as blocks of whole batches, zero-copy; Parquet path(s) (a
    string or a list, any pyarrow.fs URI) read by Ray Data as a stream, never whole in this task."""
    import ray.data

    _quiet_and_ordered(ray.data.DataContext.get_current())  # a Dataset keeps a copy of the context it was made in
    if isinstance(value, str | list):
        return ray.data.read_parquet(value)
    # from_blocks (a DeveloperAPI of the pinned Ray 2.60) reads each block's metadata here; from_arrow runs a Ray
    # task per block for it, whose worker starts held back the replicas' own starts (the second one a second late).
    return ray.data.from_blocks(blocks(value, batch_size, workers))


def generate_stream(source: Any, params: GenerateParams, unit: ResourceUnit, home: str | None,
                    each: Callable[[Any], None]) -> None:
    """Run the prompts of Dataset `source` through the actor pool; `each` gets every generated block, in input
    order, as it is ready (this task holds one block at a time)."""
    import ray.data

    _quiet_and_ordered(ray.data.DataContext.get_current())
    _quiet_and_ordered(source.context)  # made elsewhere, it has its own copy
    workers = max(1, unit.workers)
    dataset = source.map_batches(
        Generator, batch_size=params.batch_size, batch_format="pyarrow", zero_copy_batch=True,
        fn_constructor_kwargs={"model": params.model, "sampling": params.sampling.model_dump(),
                               "prompt_column": params.prompt_column, "dedup": params.dedup,
                               "num_gpus": unit.num_gpus, "home": home},
        concurrency=workers, num_cpus=unit.num_cpus, num_gpus=unit.num_gpus or None,
        resources=dict(unit.custom) or None)
    for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        each(block)


def _quiet_and_ordered(data_context: Any) -> None:
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False
    data_context.execution_options.preserve_order = True  # blocks come back in input order: no sort, no row ids
