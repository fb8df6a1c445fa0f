"""The genai kinds' params as pydantic models: checked at submit (an unknown key is named) and again in the worker."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class SamplingParams(_Strict):
    """How tokens are chosen. temperature 0 is greedy (deterministic); above 0 samples with `seed`."""

    max_new_tokens: int = Field(32, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    seed: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list, max_length=16)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' `generate`."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.temperature > 0,
                                  "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


class GenerateParams(_Strict):
    """Params of `llm_generate` (and of `rag_query`'s `generate`)."""

    model: str = Field(min_length=1)
    prompt_column: str = "prompt"
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    batch_size: int = Field(16, ge=1, le=4096)
    dedup: bool = True  # duplicate prompts in one batch are generated once and fanned out
    template: str | None = None  # rag_query: the prompt, with {question} and {context}


class EmbedParams(_Strict):
    """Params of `embed`: the model, the columns, and the splitter (characters, on word boundaries)."""

    model: str = Field(min_length=1)
    text_column: str = "text"
    id_column: str = "id"
    chunk_size: int = Field(512, ge=16, le=100_000)
    chunk_overlap: int = Field(64, ge=0)
    batch_size: int = Field(32, ge=1, le=4096)
    incremental: bool = True  # reuse vectors of chunks whose content hash was embedded before by this model


class RagQueryParams(_Strict):
    """Params of `rag_query`: the embedding model (the index's), k, and an optional generation step."""

    model: str = Field(min_length=1)
    question_column: str = "question"
    top_k: int = Field(4, ge=1, le=1000)
    generate: GenerateParams | None = None


class LoraParams(_Strict):
    """A LoRA adapter (peft) instead of training every weight: rank `r`, scale `alpha`, `dropout`, and the module
    names it wraps (peft's choice for the architecture when absent)."""

    r: int = Field(8, ge=1, le=1024)
    alpha: int = Field(16, ge=1, le=4096)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, min_length=1, max_length=64)


# The columns each method trains on (docs/genai.md#finetune).
FINETUNE_COLUMNS: dict[str, tuple[str, ...]] = {"sft": ("prompt", "completion"),
                                                "dpo": ("prompt", "chosen", "rejected")}


class FinetuneParams(_Strict):
    """Params of `finetune`: the base model, the method (TRL's SFT or DPO), optional LoRA, the loop, checkpoints
    (each epoch, or every `checkpoint_every` optimizer steps), and where it is logged and registered."""

    model: str = Field(min_length=1)
    method: Literal["sft", "dpo"]
    lora: LoraParams | None = None
    epochs: int = Field(1, ge=1, le=10_000)
    lr: float = Field(5e-5, gt=0.0, le=1.0)
    lr_scheduler: Literal["linear", "constant", "cosine"] = "linear"
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    batch_size: int = Field(8, ge=1, le=4096)  # per worker
    max_length: int = Field(512, ge=8, le=131_072)  # tokens of prompt and answer together
    beta: float | None = Field(None, gt=0.0, le=100.0)  # dpo only: the strength of the KL penalty (0.1)
    checkpoint_every: int | None = Field(None, ge=1, le=10_000_000)  # optimizer steps; none: each epoch
    seed: int = Field(0, ge=0)
    experiment: str | None = Field(None, min_length=1, max_length=256)
    registered_model: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    max_failures: int = Field(0, ge=-1, le=100)  # Ray Train's in-run restarts (0: the fabric's retry decides)

    @field_validator("beta")
    @classmethod
    def _beta_is_dpo(cls, beta: float | None, info: ValidationInfo) -> float | None:
        if beta is not None and info.data.get("method", "dpo") != "dpo":
            raise ValueError("beta applies to method dpo only")
        return beta

    @property
    def columns(self) -> tuple[str, ...]:
        return FINETUNE_COLUMNS[self.method]


class IndexParams(_Strict):
    """`rag_index` takes no params (the index is exact inner product over unit vectors: cosine)."""


def param_errors(model: type[BaseModel], params: Any) -> list[tuple[str, str]]:
    """(dotted location, message) for each problem pydantic finds in `params`; empty when valid."""
    try:
        model.model_validate(params)
    except ValidationError as exc:
        out = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = "unknown param" if error["type"] == "extra_forbidden" else error["msg"]
            out.append((where, message))
        return out
    return []
