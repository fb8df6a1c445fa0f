"""Fine-tuning with TRL (SFT or DPO, optionally LoRA with peft) in one process: the trainer built from a node's
params and rows, the callback that checkpoints and reports, the checkpoint marker that says a copy is complete,
the newest complete checkpoint under a storage path, and the model files exported from the last one. No Ray here
(fabric/ml/genai/finetune_ray.py runs this on Ray Train's workers)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fabric.ml.genai.models import offline
from fabric.ml.genai.params import FinetuneParams
from fabric.ml.storage import found_at, list_storage, open_storage

MARKER_FILE = "fabric_checkpoint.json"  # written last: step, epoch, and every file of the checkpoint with its size
# Files of a Trainer checkpoint that are training state, not the model: never exported. training_args.bin is a
# pickle (unpickling runs code): it is left out of the exported model too.
STATE_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "scaler.pt", MARKER_FILE)
Report = Callable[[dict[str, float], "str | None"], None]  # (metrics, checkpoint dir on rank 0, else None)
Beat = Callable[..., None]  # fabric.ml.loop.Heartbeat: (epoch, batch, *, step=, force=, done=)


def check_rows(rows: Mapping[str, list[Any]], columns: tuple[str, ...]) -> None:
    """Every column a non-empty list of strings of one length; ValueError naming the column and row otherwise."""
    lengths = {len(rows[c]) for c in columns}
    if lengths == {0}:
        raise ValueError("the training table has no rows")
    for column in columns:
        for i, value in enumerate(rows[column]):
            if not isinstance(value, str) or not value:
                raise ValueError(f"column {column!r} row {i} is {value!r}: every row needs a non-empty string")


def lora_config(params: FinetuneParams) -> Any:
    if params.lora is None:
        return None
    from peft import LoraConfig

    lora = params.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                      target_modules=list(lora.target_modules) if lora.target_modules else None)


def build_trainer(params: FinetuneParams, rows: Mapping[str, list[Any]], base: str, output_dir: str, *,
                  use_cpu: bool, callbacks: Sequence[Any] = ()) -> Any:
    """A TRL SFTTrainer or DPOTrainer over `rows` (the method's columns), the model loaded from `base` (a local
    save_pretrained directory: offline, safetensors, no remote code), checkpoints under `output_dir`."""
    offline()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=False, local_files_only=True,
                                                 use_safetensors=True)
    dataset = Dataset.from_dict({c: list(rows[c]) for c in params.columns})
    every = params.checkpoint_every
    common: dict[str, Any] = dict(
        output_dir=output_dir, num_train_epochs=params.epochs, learning_rate=params.lr,
        lr_scheduler_type=params.lr_scheduler, weight_decay=params.weight_decay,
        per_device_train_batch_size=params.batch_size, max_length=params.max_length, seed=params.seed,
        data_seed=params.seed, logging_steps=1, save_strategy="steps" if every else "epoch", save_steps=every or 500,
        save_total_limit=2, report_to="none", disable_tqdm=True, use_cpu=use_cpu, dataloader_num_workers=0,
        remove_unused_columns=True)
    if params.method == "sft":
        from trl import SFTConfig, SFTTrainer

        return SFTTrainer(model=model, args=SFTConfig(**common, completion_only_loss=True), train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora_config(params), callbacks=list(callbacks))
    from trl import DPOConfig, DPOTrainer

    return DPOTrainer(model=model, args=DPOConfig(**common, beta=params.beta or 0.1), train_dataset=dataset,
                      processing_class=tokenizer, peft_config=lora_config(params), callbacks=list(callbacks))


def write_marker(directory: Path, step: int, epoch: float, max_steps: int) -> None:
    """The marker of a complete checkpoint: written after every other file, listing them with their sizes."""
    files = {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*"))
             if p.is_file() and p.name != MARKER_FILE}
    (directory / MARKER_FILE).write_text(json.dumps({"step": step, "epoch": epoch, "max_steps": max_steps,
                                                     "files": files}))


def checkpoint_callback(report: Report, beat: Beat | None, save_each_steps: bool) -> Any:
    """A transformers TrainerCallback: a heartbeat each step; on each save, rank 0 marks the checkpoint complete
    and reports it (every rank reports, as Ray Train asks); the last step always saves."""
    from transformers import TrainerCallback

    class Checkpointer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            if beat is not None:
                beat(int(state.epoch or 0), state.global_step, step=state.global_step)
            if save_each_steps and state.global_step >= state.max_steps:
                control.should_save = True
            return control

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            losses = [row["loss"] for row in state.log_history if "loss" in row]
            metrics = {"step": float(state.global_step), "epoch": float(state.epoch or 0.0),
                       "loss": float(losses[-1]) if losses else float("nan")}
            if state.is_world_process_zero:
                directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                write_marker(directory, state.global_step, float(state.epoch or 0.0), state.max_steps)
                report(metrics, str(directory))
            else:
                report(metrics, None)
            return control

    return Checkpointer()


def train(params: FinetuneParams, rows: Mapping[str, list[Any]], base: str, output_dir: str, *, report: Report,
          resume: str | None = None, beat: Beat | None = None, use_cpu: bool = True) -> Any:
    """Train to the end, from the checkpoint directory `resume` when given; the Trainer's final state."""
    callback = checkpoint_callback(report, beat, save_each_steps=params.checkpoint_every is not None)
    trainer = build_trainer(params, rows, base, output_dir, use_cpu=use_cpu, callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    if beat is not None:
        beat(params.epochs, trainer.state.global_step, step=trainer.state.global_step, force=True, done=True)
    return trainer.state


def latest_checkpoint(storage: str, filesystem: Any = None) -> tuple[str, dict[str, Any]] | None:
    """The newest complete checkpoint under `storage` (any attempt), as (directory, marker); every file the
    marker lists must be there with its size. Read through `filesystem` (a pyarrow one) when given."""
    import pyarrow.fs as pafs

    listed = list_storage(storage, filesystem)
    if listed is None:
        return None
    fs, infos = listed
    sizes = {info.path: info.size for info in infos if info.type == pafs.FileType.File}
    found: list[tuple[int, str, dict[str, Any]]] = []
    for path in sizes:
        if not path.endswith("/" + MARKER_FILE):
            continue
        directory = path.rsplit("/", 1)[0]
        try:
            with fs.open_input_stream(path) as stream:
                marker = json.loads(stream.read())
        except (OSError, ValueError):
            continue
        if all(sizes.get(f"{directory}/{name}") == size for name, size in marker.get("files", {}).items()):
            found.append((int(marker["step"]), directory, marker))
    if not found:
        return None
    _, directory, marker = max(found, key=lambda item: item[0])
    return found_at(storage, directory, filesystem), marker


def copy_tree(source: str, target: str, *, source_fs: Any = None, skip: tuple[str, ...] = ()) -> None:
    """Copy a directory between local paths and pyarrow.fs URIs (or through `source_fs`), leaving out `skip`."""
    import pyarrow.fs as pafs

    src_fs, src = open_storage(source, source_fs)
    dst_fs, dst = open_storage(target)
    dst_fs.create_dir(dst, recursive=True)
    for info in src_fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        relative = info.path[len(src.rstrip("/")) + 1:]
        if info.type != pafs.FileType.File or relative.split("/")[-1] in skip or "rng_state" in relative:
            continue
        if "/" in relative:
            dst_fs.create_dir(f"{dst}/{relative.rsplit('/', 1)[0]}", recursive=True)
        with src_fs.open_input_stream(info.path) as read, dst_fs.open_output_stream(f"{dst}/{relative}") as write:
            while chunk := read.read(1 << 24):
                write.write(chunk)


def export_model(checkpoint: str, local_dir: Path, base_reference: str, filesystem: Any = None) -> dict[str, Any]:
    """The model of a checkpoint (or its LoRA adapter) as a save_pretrained directory in `local_dir`, without the
    training state; an adapter names `base_reference` as its base, so a loader elsewhere resolves it the same way.
    Returns the Trainer's state (log_history, global_step) from the checkpoint."""
    copy_tree(checkpoint, str(local_dir), source_fs=filesystem, skip=STATE_FILES)
    adapter = local_dir / "adapter_config.json"
    if adapter.is_file():
        config = json.loads(adapter.read_text())
        config["base_model_name_or_path"] = base_reference
        adapter.write_text(json.dumps(config, indent=2))
    with _open(checkpoint, "trainer_state.json", filesystem) as stream:
        return dict(json.loads(stream.read()))


def _open(directory: str, name: str, filesystem: Any) -> Any:
    import pyarrow.fs as pafs

    if filesystem is not None:
        return filesystem.open_input_stream(f"{directory}/{name}")
    if "://" in directory:
        base, _, query = directory.partition("?")
        fs, path = pafs.FileSystem.from_uri(f"{base}/{name}" + (f"?{query}" if query else ""))
        return fs.open_input_stream(path)
    return open(os.path.join(directory, name), "rb")


def loss_history(state: Mapping[str, Any]) -> list[dict[str, float]]:
    """The training loss each logged step, from a Trainer state (trainer_state.json)."""
    return [{"step": int(row["step"]), "epoch": float(row.get("epoch", 0.0)), "loss": float(row["loss"])}
            for row in state.get("log_history", []) if "loss" in row]
