"""`finetune` without Ray: its submit-time checks, bad input failing the node by name, and TRL in one process on a
tiny model built in the test: SFT loss falls on a memorisable set, a checkpoint's step resumes, DPO with LoRA saves
an adapter that the `llm_generate` code path loads, also through a registered MLflow version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fabric.errors import SpecError
from fabric.kinds import kind_checks
from fabric.kinds.finetune import FinetuneKind, model_storage
from fabric.ml.genai import finetune
from fabric.ml.genai.models import ModelNotFound, resolve
from fabric.ml.genai.params import FinetuneParams
from fabric.plan import compile_plan
from fabric.plan.call import NodeCall
from fabric.settings import settings
from fabric.spec import load_spec
from jobs.genai.data import dpo_pairs, sft_pairs

pytestmark = pytest.mark.timeout(240)


def problems(node: dict[str, Any], ins: int = 1) -> dict[str, str]:
    upstream = [{"id": f"src{i}", "kind": "python_task", "entrypoint": "jobs.genai.data:sft_pairs", "outs": [f"t{i}"]}
                for i in range(ins)]
    spec = {"version": 1, "pipeline_id": "ft_checks", "nodes": [
        *upstream, {"id": "tune", "kind": "finetune", "ins": [f"t{i}" for i in range(ins)], **node}],
        "edges": [{"from": f"src{i}", "to": "tune"} for i in range(ins)]}
    try:
        compile_plan(load_spec(spec), runnable=kind_checks())
    except SpecError as error:
        return {p.where: p.message for p in error.problems}
    return {}


def test_finetune_params_are_checked_at_submit_naming_each_field():
    ok = {"model": "/m", "method": "dpo", "beta": 0.2, "lora": {"r": 4, "target_modules": ["c_attn"]},
          "checkpoint_every": 2}
    assert problems({"params": ok, "outs": ["model_uri", "metrics_json"]}) == {}
    found = problems({"params": {"model": "/m", "method": "ppo", "lora": {"rank": 4}, "epochs": 0}})
    assert "'sft' or 'dpo'" in found["nodes[1].params.method"]
    assert found["nodes[1].params.lora.rank"] == "finetune: unknown param"
    assert "greater than or equal to 1" in found["nodes[1].params.epochs"]
    assert problems({"params": {"model": "/m"}})["nodes[1].params.method"] == "finetune: Field required"
    assert "dpo only" in problems({"params": {"model": "/m", "method": "sft", "beta": 0.1}})["nodes[1].params.beta"]
    bad = problems({"params": {"model": "/m", "method": "sft", "lora": {"dropout": 1.0}}, "outs": ["weights"]})
    assert "less than 1" in bad["nodes[1].params.lora.dropout"] and "not ['weights']" in bad["nodes[1].outs"]
    assert "takes 1 input" in problems({"params": {"model": "/m", "method": "sft"}}, ins=2)["nodes[2].ins"]
    assert FinetuneParams(model="/m", method="dpo").columns == ("prompt", "chosen", "rejected")


def _call(params: dict[str, Any], home: Path) -> NodeCall:
    return NodeCall(submission_id="s1", pipeline_id="p", node_id="tune", attempt=1, kind="finetune", entrypoint=None,
                    params=params, input_names=("pairs",), result_slots=("out",), declared_outs=(), home=str(home))


def test_bad_input_fails_the_node_naming_the_problem_before_any_worker(tiny_lm, tmp_path):
    from fabric.context import local_context

    kind = FinetuneKind()
    with local_context(tmp_path / "a"), pytest.raises(ModelNotFound, match="nope.*does not exist"):
        kind.run(_call({"model": str(tmp_path / "nope"), "method": "sft"}, tmp_path), {"pairs": sft_pairs(4)})
    with local_context(tmp_path / "b"), pytest.raises(ValueError, match=r"no column\(s\) \['chosen', 'rejected'\]"):
        kind.run(_call({"model": str(tiny_lm), "method": "dpo"}, tmp_path), {"pairs": sft_pairs(4)})
    empty = pa.table({"prompt": ["a", None], "completion": ["b", "c"]})
    with local_context(tmp_path / "c"), pytest.raises(ValueError, match="column 'prompt' row 1 is None"):
        kind.run(_call({"model": str(tiny_lm), "method": "sft"}, tmp_path), {"pairs": empty})
    assert model_storage(_call({}, tmp_path), "s3://b/x/checkpoints/s1/tune?endpoint_override=h") == \
        "s3://b/x/models/s1/tune?endpoint_override=h"


def _rows(table: pa.Table) -> dict[str, list[Any]]:
    return {name: table.column(name).to_pylist() for name in table.column_names}


def test_sft_loss_falls_and_a_checkpoint_resumes_at_its_step(tiny_lm, tmp_path):
    params = FinetuneParams(model=str(tiny_lm), method="sft", epochs=6, lr=3e-3, batch_size=4, checkpoint_every=4,
                            lr_scheduler="constant")
    rows = _rows(sft_pairs(8))
    reports: list[tuple[dict[str, float], str | None]] = []
    state = finetune.train(params, rows, str(tiny_lm), str(tmp_path / "run"),
                           report=lambda m, d: reports.append((m, d)))
    losses = [row["loss"] for row in finetune.loss_history({"log_history": state.log_history})]
    assert state.global_step == 12 and len(losses) == 12
    assert losses[-1] < 0.8 * losses[0]  # memorising: the loss falls (not a claim about the text)
    assert [m["step"] for m, _ in reports] == [4, 8, 12]  # every 4 steps, and the last step always
    newest = finetune.latest_checkpoint(str(tmp_path / "run"))
    assert newest is not None and newest[1]["step"] == 12 and newest[1]["max_steps"] == 12
    # A copy missing a file is not complete: the newest complete one is chosen instead.
    (tmp_path / "run" / "checkpoint-12" / "model.safetensors").unlink()
    newest = finetune.latest_checkpoint(str(tmp_path / "run"))
    assert newest is not None and newest[0].endswith("checkpoint-8")

    resumed = finetune.train(params, rows, str(tiny_lm), str(tmp_path / "again"), report=lambda m, d: None,
                             resume=newest[0])
    after = finetune.loss_history({"log_history": resumed.log_history})
    assert [row["step"] for row in after] == list(range(1, 13))  # the history before the checkpoint comes with it
    assert [row["loss"] for row in after[:8]] == pytest.approx(losses[:8])
    assert resumed.global_step == 12


def test_dpo_with_lora_saves_an_adapter_that_llm_generate_loads(tiny_lm, tmp_path, monkeypatch):
    from fabric.ml import tracking
    from fabric.ml.genai.generate import Generator

    params = FinetuneParams(model=str(tiny_lm), method="dpo", epochs=2, lr=1e-2, batch_size=4, beta=0.5,
                            lora={"r": 4, "alpha": 8, "target_modules": ["c_attn"]})
    state = finetune.train(params, _rows(dpo_pairs(8)), str(tiny_lm), str(tmp_path / "run"),
                           report=lambda m, d: None)
    losses = [row["loss"] for row in finetune.loss_history({"log_history": state.log_history})]
    assert losses[-1] < losses[0]
    checkpoint, _ = finetune.latest_checkpoint(str(tmp_path / "run"))
    saved = tmp_path / "adapter"
    finetune.export_model(checkpoint, saved, str(tiny_lm))
    files = {p.name for p in saved.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= files
    assert not files & {"optimizer.pt", "training_args.bin", "trainer_state.json", "rng_state.pth"}
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_lm)
    prompts = pa.table({"prompt": dpo_pairs(2).column("prompt")})
    tuned = Generator(str(saved), {"max_new_tokens": 4})(prompts).column("completion").to_pylist()
    assert len(tuned) == 2

    # Registered in MLflow, the same files load through `models:/name/latest`.
    monkeypatch.setenv("FABRIC_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("FABRIC_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))
    settings.cache_clear()
    call = _call({}, tmp_path)
    try:
        with tracking.node_run(call):
            uri = tracking.register_directory(saved, "p.tune", tracking.run_tags(call))
        assert uri == "models:/p.tune/1"
        cache = str(tmp_path / "cache")
        local = resolve("models:/p.tune/latest", cache)
        assert (local / "adapter_model.safetensors").is_file() and local == resolve("models:/p.tune/1", cache)
        again = Generator(str(local), {"max_new_tokens": 4})(prompts).column("completion").to_pylist()
        assert again == tuned
        with pytest.raises(ModelNotFound, match="not in the model registry"):
            resolve("models:/p.tune/7", cache)
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        settings.cache_clear()
