"""Kind `llm_generate`: completions for a table of prompts with a transformers model, on Ray Data's actor pool;
shared with the RAG kinds: the submit-time checks every genai kind makes."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from typing import Any

from fabric.errors import Problem
from fabric.kinds.base import NodeCall, params_problem
from fabric.spec import NodeSpec

GENAI_PACKAGES = ("torch", "transformers", "sentence_transformers", "faiss")


def extra_and_param_problems(node: NodeSpec, where: str, model: Any, packages: tuple[str, ...] = GENAI_PACKAGES,
                             docs: str = "docs/genai.md") -> list[Problem]:
    """The genai extra's `packages` installed here, and the params against their pydantic model (each unknown key
    or bad value named)."""
    from fabric.ml.genai.params import param_errors

    problems = []
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        problems.append(params_problem(f"{where}.kind", f"kind {node.kind!r} needs {missing} installed here",
                                       "install the genai extra: pip install -e '.[genai]' (fabric-ray)"))
    for loc, message in param_errors(model, dict(node.params)):
        problems.append(params_problem(f"{where}.params.{loc}" if loc else f"{where}.params",
                                       f"{node.kind}: {message}", f"see {docs} for the params"))
    return problems


def genai_problems(node: NodeSpec, where: str, model: Any, ins: int) -> list[Problem]:
    """The extra and the params (`extra_and_param_problems`), the number of inputs, at most one out."""
    problems = extra_and_param_problems(node, where, model)
    if len(node.ins) != ins:
        problems.append(params_problem(f"{where}.ins", f"{node.kind} takes {ins} input(s), not {len(node.ins)}",
                                       "see docs/genai.md for the inputs"))
    if len(node.outs) > 1:
        problems.append(params_problem(f"{where}.outs", f"{node.kind} produces exactly one table", "declare one out"))
    return problems


def input_table(value: Any, name: str, columns: tuple[str, ...]) -> Any:
    """An input as an Arrow table, failing with the columns it lacks."""
    from fabric.tables import as_lazy_frame

    table = as_lazy_frame(value, name).collect().to_arrow()
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"input {name!r} has no column(s) {missing}; it has {table.column_names}")
    return table


class LlmGenerateKind:
    """Params: `model` (a directory saved with save_pretrained, or a pyarrow.fs URI), `prompt_column`,
    `sampling`, `batch_size`, `dedup`. `resources` are per replica; `resources.workers` replicas."""

    name = "llm_generate"

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        from fabric.ml.genai.params import GenerateParams

        problems = genai_problems(node, where, GenerateParams, 1)
        if "template" in node.params:
            problems.append(params_problem(f"{where}.params.template", "llm_generate takes no template",
                                           "put the whole prompt in the prompt column"))
        return problems

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        from fabric.context import context
        from fabric.ml.genai import models
        from fabric.ml.genai.collect import Completions
        from fabric.ml.genai.params import GenerateParams
        from fabric.ml.genai.pipeline import generate_stream, prompt_source
        from fabric.ml.ray_runs import worker_unit

        ctx = context()
        params = GenerateParams.model_validate(dict(call.params))
        models.resolve(params.model, home=call.home)  # a missing model fails here, naming it, before any replica starts
        unit = worker_unit(call)
        value = prompts_input(next(iter(inputs.values())), call.input_names[0], params.prompt_column)
        source = prompt_source(value, max(1, unit.workers), params.batch_size)
        schema = source.schema().base_schema
        if params.prompt_column not in schema.names:
            raise ValueError(f"input {call.input_names[0]!r} has no column(s) {[params.prompt_column]}; it has "
                             f"{schema.names}")
        ctx.logger.info("llm_generate: %s, %d replica(s) of %s CPU / %s GPU, batch %d",
                        "Parquet read as a stream" if isinstance(value, str | list) else f"{value.num_rows} prompts",
                        max(1, unit.workers), unit.num_cpus, unit.num_gpus, params.batch_size)
        with Completions(params.prompt_column, ctx.artifact_dir / "responses.json") as completions:
            generate_stream(source, params, unit, call.home, completions.add)
            out = completions.table(schema.empty_table())
        metrics = {**completions.metrics, "replicas": max(1, unit.workers), "batch_size": params.batch_size,
                   "device": "gpu" if unit.num_gpus else "cpu", "model": params.model}
        (ctx.artifact_dir / "metrics.json").write_text(json.dumps(metrics))
        ctx.logger.info("llm_generate: %s", json.dumps(metrics))
        ctx.progress(1.0, f"{metrics['generations']} generations for {metrics['prompts']} prompts "
                          f"({metrics['merged']} merged)")
        return out


def prompts_input(value: Any, name: str, column: str) -> Any:
    """The prompts as they may stream: Parquet path(s) as given, an Arrow table as is (no copy), anything else
    tabular through `input_table`."""
    import pyarrow as pa

    if isinstance(value, str | list | pa.Table):
        return value
    return input_table(value, name, (column,))
