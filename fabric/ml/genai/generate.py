"""Batched generation with duplicate merging: the callable class Ray Data's actor pool runs (no Ray in here), and
the columns it adds. Each distinct prompt of a batch is generated once and fanned back out to its duplicates."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from fabric.ml.genai.models import causal_lm, device_for, resolve
from fabric.ml.genai.params import SamplingParams

OUT_COLUMNS = ("completion", "prompt_tokens", "completion_tokens", "finish_reason", "merged")


def unique_order(prompts: list[str]) -> tuple[list[str], list[int]]:
    """The distinct prompts in first-seen order, and for each row the index of its distinct prompt."""
    first: dict[str, int] = {}
    index = [first.setdefault(p, len(first)) for p in prompts]
    return list(first), index


def batch_seed(seed: int, prompts: Iterable[str]) -> int:
    """The torch seed of one batch: a function of the seed and the batch's prompts only, so a run with the
    same input and batch size samples the same tokens on any actor, in any order."""
    h = hashlib.blake2b(str(seed).encode(), digest_size=8)
    for prompt in prompts:
        h.update(b"\0" + prompt.encode())
    return int.from_bytes(h.digest(), "big") & 0x7FFF_FFFF


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Generator:
    """One model replica. `__call__` takes an Arrow batch with the prompt column and returns it with
    OUT_COLUMNS added; `merged` is true on rows served by an earlier identical prompt of the same batch."""

    def __init__(self, model: str, sampling: Mapping[str, Any], prompt_column: str = "prompt",
                 dedup: bool = True, num_gpus: float = 0.0, home: str | None = None) -> None:
        self.sampling = SamplingParams.model_validate(sampling)
        self.prompt_column = prompt_column
        self.dedup = dedup
        self.device = device_for(num_gpus)
        self.model, self.tokenizer = causal_lm(str(resolve(model, home=home)), self.device, home)

    def generate(self, prompts: list[str], sampling: SamplingParams | None = None) -> list[dict[str, Any]]:
        """One result per prompt, in order (no merging here), with this replica's sampling or `sampling`."""
        import torch

        s = sampling or self.sampling
        # A prompt longer than the model's context keeps its end (the question comes last in a RAG prompt).
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config,
                                                                                        "n_positions", None)
        fit = {"truncation": True, "max_length": max(1, limit - s.max_new_tokens)} if limit else {}
        self.tokenizer.truncation_side = "left"
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, **fit).to(self.device)
        width = encoded["input_ids"].shape[1]
        if s.temperature > 0:
            torch.manual_seed(batch_seed(s.seed, prompts))
        with torch.inference_mode():
            output = self.model.generate(**encoded, **s.generate_kwargs(), pad_token_id=self.tokenizer.pad_token_id)
        eos = self.tokenizer.eos_token_id
        results = []
        for row, tokens in enumerate(output[:, width:].tolist()):
            ended = eos is not None and eos in tokens
            if ended:
                tokens = tokens[:tokens.index(eos)]
            text, stopped = _cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), s.stop)
            if stopped:
                tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            reason = "stop" if ended or stopped else "length"
            results.append({"completion": text, "prompt_tokens": int(encoded["attention_mask"][row].sum()),
                            "completion_tokens": len(tokens), "finish_reason": reason})
        return results

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        prompts = [str(p) for p in batch.column(self.prompt_column).to_pylist()]
        if self.dedup:
            distinct, index = unique_order(prompts)
        else:
            distinct, index = prompts, list(range(len(prompts)))
        made = self.generate(distinct) if distinct else []
        seen: set[int] = set()
        merged = []
        for i in index:
            merged.append(i in seen)
            seen.add(i)
        columns = {name: [made[i][name] for i in index] for name in OUT_COLUMNS[:-1]}
        columns["merged"] = merged
        types = {"completion": pa.string(), "prompt_tokens": pa.int32(), "completion_tokens": pa.int32(),
                 "finish_reason": pa.string(), "merged": pa.bool_()}
        for name in OUT_COLUMNS:
            if name in batch.column_names:
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, pa.array(columns[name], type=types[name]))
        return batch
