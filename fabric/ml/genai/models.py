"""Loading a model saved with `save_pretrained`: offline (no hub), safetensors only, no remote code. A model is a
local directory, a pyarrow.fs URI (s3://, gs://, file://) or a registered MLflow version (models:/name/version)
copied to a local cache first, a full model or a LoRA adapter over one; a model's content hash keys the embedding
cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1",
               "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


class ModelNotFound(FileNotFoundError):
    """The model reference names nothing this worker can read."""


def offline() -> None:
    """No model load may reach a hub: a name that is not a local path fails instead of downloading."""
    os.environ.update(OFFLINE_ENV)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # the genai extra is missing: the kind's check already said so
        pass


ADAPTER_CONFIG = "adapter_config.json"  # a LoRA adapter (peft), which names its base model


def _registered(reference: str, root: Path, home: str | None) -> Path:
    """A registered MLflow model version (`models:/name/version`, `/latest` or `@alias`), downloaded once."""
    from fabric.ml import tracking

    try:
        fixed = tracking.registered_version(reference, home=home)
    except ImportError:
        raise ModelNotFound(f"model {reference!r} needs MLflow installed to be read") from None
    except Exception as exc:  # MlflowException (no such model or version), or the store unreachable
        raise ModelNotFound(f"model {reference!r} is not in the model registry: {exc}") from None
    uri = tracking.tracking_uri(home)
    local = root / hashlib.blake2b(f"{uri}\0{fixed}".encode(), digest_size=12).hexdigest()
    if not ((local / "config.json").is_file() or (local / ADAPTER_CONFIG).is_file()):
        staging = root / f".{local.name}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        tracking.download_registered(fixed, str(staging), home=home)
        if not ((staging / "config.json").is_file() or (staging / ADAPTER_CONFIG).is_file()):
            raise ModelNotFound(f"model {reference!r} ({fixed}) holds no save_pretrained model")
        try:
            staging.replace(local)
        except OSError:  # another process put it there meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return local


def resolve(reference: str, cache_root: str | None = None, home: str | None = None) -> Path:
    """A local directory holding the model `reference` names; ModelNotFound naming it when there is none. A
    `models:/` reference is read from the tracking store of `home` (the node's FABRIC_HOME; fabric/settings.py)."""
    if reference.startswith("models:/"):
        return _registered(reference, Path(cache_root or Path.home() / ".fabric" / "genai" / "models"), home)
    if "://" in reference and not reference.startswith("file://"):
        import pyarrow.fs as pafs

        root = Path(cache_root or Path.home() / ".fabric" / "genai" / "models")
        local = root / hashlib.blake2b(reference.encode(), digest_size=12).hexdigest()
        if not (local / "config.json").is_file():
            filesystem, path = pafs.FileSystem.from_uri(reference)
            if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
                raise ModelNotFound(f"model {reference!r} does not exist")
            local.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(path, str(local), source_filesystem=filesystem)
        return local
    path = Path(reference.removeprefix("file://")).expanduser()
    if not ((path / "config.json").is_file() or (path / ADAPTER_CONFIG).is_file()):
        what = "has no config.json (save it with save_pretrained)" if path.is_dir() else "does not exist"
        raise ModelNotFound(f"model path {str(path)!r} {what}")
    return path


def content_hash(path: Path) -> str:
    """A digest of the model's files (names and bytes): what the model is, not where it lies."""
    from fabric.digests import file_digest

    h = hashlib.blake2b(digest_size=16)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode() + b"\0" + file_digest(str(file)).encode())
    return h.hexdigest()


def device_for(num_gpus: float) -> str:
    """cuda when this process was given a GPU and torch sees one, else cpu."""
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=4)
def causal_lm(path: str, device: str, home: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode, left-padded for batched generation; a LoRA adapter's base (which its
    adapter_config.json names) is resolved as any model reference."""
    offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    adapter = Path(path) / ADAPTER_CONFIG
    base = path
    if adapter.is_file():
        base = str(resolve(json.loads(adapter.read_text())["base_model_name_or_path"], home=home))
    model: Any = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=False, local_files_only=True,
                                                      use_safetensors=True)
    if adapter.is_file():  # a LoRA adapter over its base, merged once for plain generation
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path, is_trainable=False).merge_and_unload()
    model.to(device)  # transformers types `.to` oddly; it moves the weights in place
    return model.eval(), tokenizer


@lru_cache(maxsize=4)
def sentence_encoder(path: str, device: str) -> Any:
    """A sentence-transformers encoder (a plain transformers encoder gets mean pooling)."""
    offline()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device, trust_remote_code=False, local_files_only=True,
                               model_kwargs={"use_safetensors": True})
