"""What `llm_generate`'s task makes of the completions as they stream out of Ray Data, batch by batch and in input
order: `responses.json`, the metrics, and the output table, spilled to an Arrow file and memory-mapped, so the
task's own memory never holds every row (a million prompts pass through in bounded memory)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fabric.ml.genai.generate import OUT_COLUMNS

OUT_TYPES = {"completion": "string", "prompt_tokens": "int32", "completion_tokens": "int32",
             "finish_reason": "string", "merged": "bool_"}


class Completions:
    """Fed each generated batch in order (`add`); then `table()` is every row, read from a memory-mapped file. Used
    as a context manager, so a generation that fails leaves no spill file and no open responses.json."""

    def __init__(self, prompt_column: str, responses: Path, spill_dir: str | None = None) -> None:
        self.prompt_column = prompt_column
        self.metrics: dict[str, Any] = {"prompts": 0, "generations": 0, "merged": 0, "prompt_tokens": 0,
                                        "completion_tokens": 0, "finish_reasons": {}}
        self._responses = open(responses, "w")  # noqa: SIM115 - closed in table(), or on leaving the context
        self._responses.write("[")
        fd, self._spill = tempfile.mkstemp(prefix="fabric-completions-", suffix=".arrow", dir=spill_dir)
        os.close(fd)
        self._sink: Any = None
        self._writer: Any = None

    def __enter__(self) -> Completions:
        return self

    def __exit__(self, *_: object) -> None:
        self._responses.close()
        if self._writer is not None and not self._sink.closed:
            self._writer.close()
            self._sink.close()
        if os.path.exists(self._spill):  # table() was not reached: the run failed
            os.unlink(self._spill)

    def add(self, batch: Any) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if batch.num_rows == 0:
            return
        if self._writer is None:
            self._sink = pa.OSFile(self._spill, "wb")
            self._writer = pa.ipc.new_file(self._sink, batch.schema)
        self._writer.write_table(batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]))
        m = self.metrics
        merged = int(pc.sum(batch.column("merged")).as_py() or 0)
        m["merged"] += merged
        m["generations"] += batch.num_rows - merged
        m["prompt_tokens"] += int(pc.sum(batch.column("prompt_tokens")).as_py() or 0)
        m["completion_tokens"] += int(pc.sum(batch.column("completion_tokens")).as_py() or 0)
        for reason, count in zip(*_value_counts(batch.column("finish_reason")), strict=True):
            m["finish_reasons"][reason] = m["finish_reasons"].get(reason, 0) + count
        columns = ("completion", "finish_reason", "prompt_tokens", "completion_tokens", "merged")
        for row in batch.select([self.prompt_column, *columns]).to_pylist():
            self._responses.write(("," if m["prompts"] else "") + "\n" + json.dumps({
                "index": m["prompts"], "prompt": row[self.prompt_column], **{c: row[c] for c in columns}}))
            m["prompts"] += 1

    def table(self, empty_like: Any) -> Any:
        """Every row added, in order (memory-mapped: the pages are the file's, not this process's heap); with no
        row, `empty_like`'s columns and the completion columns, empty."""
        import pyarrow as pa

        self._responses.write("\n]\n")
        self._responses.close()
        try:
            if self._writer is None:
                out = empty_like.slice(0, 0)
                for name in OUT_COLUMNS:
                    if name not in out.column_names:
                        out = out.append_column(name, pa.array([], type=getattr(pa, OUT_TYPES[name])()))
                return out
            self._writer.close()
            self._sink.close()
            return pa.ipc.open_file(pa.memory_map(self._spill)).read_all()
        finally:
            os.unlink(self._spill)  # a mapping outlives its file's name: the table stays readable


def _value_counts(column: Any) -> tuple[list[str], list[int]]:
    import pyarrow.compute as pc

    counts = pc.value_counts(column)
    return [str(v) for v in counts.field("values").to_pylist()], counts.field("counts").to_pylist()


__all__ = ["Completions"]
