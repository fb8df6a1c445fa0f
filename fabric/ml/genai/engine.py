"""One `llm_serve` replica's model (no Ray here): batches of requests generated with `llm_generate`'s Generator, and
one request streamed token by token. One generation at a time per replica (a lock): the tokenizer is not
thread-safe, and a CPU replica gains nothing from two."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from fabric.ml.genai.generate import Generator, _cut_at_stop, batch_seed
from fabric.ml.genai.params import SamplingParams

STREAM_TIMEOUT_S = 120.0


class ContextTooLong(ValueError):
    """max_tokens leaves no room for the prompt in the model's context."""


class LlmEngine:
    def __init__(self, model: str, num_gpus: float = 0.0, home: str | None = None) -> None:
        self.generator = Generator(model, {}, num_gpus=num_gpus, home=home)  # home: where models:/ URIs are read
        self.model, self.tokenizer = self.generator.model, self.generator.tokenizer
        config = self.model.config
        self.context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.lock = threading.Lock()
        self.stats = {"generations": 0, "batches": 0, "streams": 0, "largest_batch": 0}

    def check(self, sampling: SamplingParams) -> None:
        if self.context and sampling.max_new_tokens >= self.context:
            raise ContextTooLong(f"max_tokens {sampling.max_new_tokens} does not fit the model's context of "
                                 f"{self.context} tokens: ask for fewer than {self.context}")

    def generate(self, items: list[tuple[str, SamplingParams]]) -> list[dict[str, Any] | Exception]:
        """One result (or the error of that item) per (prompt, sampling), in order. Greedy items with the same
        sampling share one generate call; a sampled item is generated alone, seeded from its own seed and prompt,
        so its answer does not depend on what it was batched with."""
        results: list[dict[str, Any] | Exception | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, (_, sampling) in enumerate(items):
            try:
                self.check(sampling)
            except ContextTooLong as exc:
                results[i] = exc
                continue
            key = sampling.model_dump_json() if sampling.temperature == 0 else f"sampled-{i}"
            groups.setdefault(key, []).append(i)
        with self.lock:
            for indices in groups.values():
                prompts = [items[i][0] for i in indices]
                try:
                    made: list[Any] = self.generator.generate(prompts, items[indices[0]][1])
                except Exception as exc:  # noqa: BLE001 - this group's requests fail, the batch's others do not
                    made = [exc] * len(indices)
                for i, result in zip(indices, made, strict=True):
                    results[i] = result
            self.stats["generations"] += len(items)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(items))
        return [r if r is not None else RuntimeError("not generated") for r in results]

    def stream(self, prompt: str, sampling: SamplingParams) -> Stream:
        self.check(sampling)
        return Stream(self, prompt, sampling)


class Stream:
    """One streamed generation: iterate for the text pieces as tokens are made; then `finish_reason` and the
    token counts are set. `cancel()` (a stop string met, the client gone) ends the generation at its next token."""

    def __init__(self, engine: LlmEngine, prompt: str, sampling: SamplingParams) -> None:
        from transformers import StoppingCriteria, TextIteratorStreamer

        self.engine, self.prompt, self.sampling = engine, prompt, sampling
        self.cancelled = threading.Event()
        self.finish_reason: str | None = None
        self.prompt_tokens = self.completion_tokens = 0
        self.error: Exception | None = None
        self.streamer = TextIteratorStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                             timeout=STREAM_TIMEOUT_S)
        cancelled = self.cancelled

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancelled.is_set()

        self.criteria = _Cancelled()
        self.thread = threading.Thread(target=self._run, name="fabric-llm-stream", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import torch
        from transformers import StoppingCriteriaList

        engine, s = self.engine, self.sampling
        try:
            with engine.lock:
                fit = {"truncation": True, "max_length": max(1, engine.context - s.max_new_tokens)} \
                    if engine.context else {}
                engine.tokenizer.truncation_side = "left"
                encoded = engine.tokenizer([self.prompt], return_tensors="pt", **fit).to(engine.generator.device)
                width = encoded["input_ids"].shape[1]
                if s.temperature > 0:
                    torch.manual_seed(batch_seed(s.seed, [self.prompt]))
                with torch.inference_mode():
                    output = engine.model.generate(**encoded, **s.generate_kwargs(), streamer=self.streamer,
                                                   stopping_criteria=StoppingCriteriaList([self.criteria]),
                                                   pad_token_id=engine.tokenizer.pad_token_id)
                engine.stats["streams"] += 1
            tokens = output[0, width:].tolist()
            eos = engine.tokenizer.eos_token_id
            self.prompt_tokens, self.completion_tokens = width, len(tokens)
            self.finish_reason = "stop" if eos is not None and eos in tokens else "length"
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            self.error = exc
            self.streamer.end()

    def __iter__(self) -> Iterator[str]:
        text = ""
        for piece in self.streamer:
            if self.error is not None:
                raise self.error
            cut, stopped = _cut_at_stop(text + piece, self.sampling.stop)
            if stopped:
                self.cancel()
                if len(cut) > len(text):
                    yield cut[len(text):]
                self.thread.join(STREAM_TIMEOUT_S)
                self.finish_reason = "stop"
                return
            text += piece
            if piece:
                yield piece
        self.thread.join(STREAM_TIMEOUT_S)
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self.cancelled.set()
