"""LLM and RAG helpers for the genai kinds: sampling params, model loading (offline, safetensors only), batched
generation with duplicate merging, a text splitter, embeddings and a faiss index. Importing this package loads
neither torch, transformers nor faiss; they load when used (the `genai` extra)."""

from __future__ import annotations

from fabric.ml.genai.params import EmbedParams, GenerateParams, RagQueryParams, SamplingParams

__all__ = ["EmbedParams", "GenerateParams", "RagQueryParams", "SamplingParams"]
