"""Tiny models built here, downloading nothing: a byte-level BPE tokenizer trained on generated text, a
random-initialised 2-layer GPT-2 (causal LM) and a 2-layer BERT (sentence encoder), saved with `save_pretrained`
so they load through the same path a real model takes. Seeded: the same call makes the same weights."""

from __future__ import annotations

import os
import random
from pathlib import Path

WORDS = ("alpha", "beta", "gamma", "delta", "price", "trade", "asset", "market", "risk", "return", "yield", "bond",
         "stock", "index", "fund", "rate", "curve", "spread", "hedge", "option", "future", "swap", "credit", "equity",
         "volume", "order", "book", "bid", "ask", "tick", "quote", "fill")


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(n)]


def _tokenizer(vocab_size: int, seed: int):  # noqa: ANN202 - a transformers tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<unk>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(seed=seed), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                   bos_token="<eos>", model_input_names=["input_ids", "attention_mask"])


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def causal_lm(path: str | Path, seed: int = 0, vocab_size: int = 320, width: int = 32) -> Path:
    """A 2-layer GPT-2 with its tokenizer in `path` (made once: an existing model is kept)."""
    _offline()
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _tokenizer(vocab_size, seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=width, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def encoder(path: str | Path, seed: int = 0, vocab_size: int = 320, width: int = 64) -> Path:
    """A 2-layer BERT with the same kind of tokenizer in `path` (sentence-transformers adds mean pooling)."""
    _offline()
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = _tokenizer(vocab_size, seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * width, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def ensure(models_dir: str = "~/.fabric/genai/tiny") -> dict[str, str]:
    """The example's first node: build the tiny LM and encoder under `models_dir` unless they are there."""
    root = Path(models_dir).expanduser()
    return {"lm": str(causal_lm(root / "lm")), "encoder": str(encoder(root / "encoder"))}
