"""Kinds `embed`, `rag_index` and `rag_query`: documents split and embedded with sentence-transformers (vectors
of unchanged chunks reused), a faiss index as an artifact with its content hash, top-k retrieval with an
optional answer from the same generator as `llm_generate`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fabric.errors import Problem
from fabric.kinds.base import NodeCall, params_problem
from fabric.kinds.llm import genai_problems, input_table
from fabric.spec import NodeSpec


def _write(ctx: Any, name: str, value: Mapping[str, Any]) -> None:
    (ctx.artifact_dir / name).write_text(json.dumps(value))
    ctx.logger.info("%s: %s", name, json.dumps(value))


class EmbedKind:
    """One input (documents with `id_column` and `text_column`); out: one row per chunk with `embedding`."""

    name = "embed"

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        from fabric.ml.genai.params import EmbedParams

        problems = genai_problems(node, where, EmbedParams, 1)
        size, overlap = node.params.get("chunk_size", 512), node.params.get("chunk_overlap", 64)
        if isinstance(size, int) and isinstance(overlap, int) and overlap >= size:
            problems.append(params_problem(f"{where}.params.chunk_overlap", "chunk_overlap must be smaller than "
                                           "chunk_size", "lower chunk_overlap"))
        return problems

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        import pyarrow as pa

        from fabric.context import context
        from fabric.ml.genai import models, rag
        from fabric.ml.genai.params import EmbedParams

        ctx = context()
        p = EmbedParams.model_validate(dict(call.params))
        path = models.resolve(p.model, home=call.home)
        docs = input_table(next(iter(inputs.values())), call.input_names[0], (p.id_column, p.text_column))
        chunks = rag.chunk_table(docs, p.id_column, p.text_column, p.chunk_size, p.chunk_overlap)
        model_hash = models.content_hash(path)
        hashes = chunks.column("content_hash").to_pylist()
        # Per team, per model: hashes and vectors only, so nothing of one team's text reaches another's cache.
        cache = rag.VectorCache(Path(call.home) / "genai" / "vectors" / (call.team or "_") / model_hash)
        known = cache.load(set(hashes)) if p.incremental else {}
        todo = sorted({h for h in hashes if h not in known})
        text_of = dict(zip(hashes, chunks.column("text").to_pylist(), strict=True))
        encoder = models.sentence_encoder(str(path), models.device_for(call.unit.num_gpus if call.unit else 0))
        fresh = rag.embed_texts(encoder, [text_of[h] for h in todo], p.batch_size)
        if p.incremental:
            cache.add(todo, fresh)
        vectors = {**known, **dict(zip(todo, fresh, strict=True))}
        out = chunks.append_column("embedding", pa.array([vectors[h] for h in hashes], pa.list_(pa.float32())))
        out = out.replace_schema_metadata({rag.MODEL_KEY: model_hash.encode()})  # rag_query checks its model
        changed = sorted({d for d, h in zip(chunks.column("doc_id").to_pylist(), hashes, strict=True) if h in todo})
        _write(ctx, "metrics.json", {"documents": docs.num_rows, "chunks": out.num_rows, "embedded": len(todo),
                                     "reused": len(set(hashes)) - len(todo), "documents_embedded": len(changed),
                                     "model_hash": model_hash,
                                     "dim": len(next(iter(vectors.values()))) if vectors else 0})
        return out


class RagIndexKind:
    """One input (an `embed` table); out: the index table (chunks, with the faiss index in its metadata);
    `index.faiss` and `index.json` (content hash, count, dim) in the node's files."""

    name = "rag_index"

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        from fabric.ml.genai.params import IndexParams

        return genai_problems(node, where, IndexParams, 1)

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        from fabric.context import context
        from fabric.ml.genai import rag

        ctx = context()
        value = next(iter(inputs.values()))
        embedded = input_table(value, call.input_names[0], ("doc_id", "chunk", "text", "content_hash", "embedding"))
        model_hash = ((getattr(value, "schema", None) and value.schema.metadata) or {}).get(rag.MODEL_KEY, b"")
        table, digest = rag.build_index(embedded, model_hash.decode())
        (ctx.artifact_dir / "index.faiss").write_bytes((table.schema.metadata or {})[rag.INDEX_KEY])
        dim = len(embedded.column("embedding")[0].as_py()) if embedded.num_rows else 0
        _write(ctx, "index.json", {"content_hash": digest, "count": table.num_rows, "dim": dim, "metric": "cosine"})
        return table


class RagQueryKind:
    """Two inputs in order: the index (from `rag_index`) and the questions; out: per question its top-k chunks
    (`doc_ids`, `chunks`, `scores`, `context`), and with `generate` the llm_generate columns."""

    name = "rag_query"

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        from fabric.ml.genai.params import RagQueryParams

        return genai_problems(node, where, RagQueryParams, 2)

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        import pyarrow as pa

        from fabric.context import context
        from fabric.ml.genai import generate, models, rag
        from fabric.ml.genai.collect import Completions
        from fabric.ml.genai.params import RagQueryParams

        ctx = context()
        p = RagQueryParams.model_validate(dict(call.params))
        index_value, question_value = (inputs[name] for name in call.input_names)
        index, index_hash, index_model = rag.index_of(index_value)
        chunks = index_value
        questions = input_table(question_value, call.input_names[1], (p.question_column,))
        path = models.resolve(p.model, home=call.home)
        if index_model and index_model != models.content_hash(path):
            raise ValueError(f"model {p.model!r} is not the model the index was embedded with (hash {index_model})")
        device = models.device_for(call.unit.num_gpus if call.unit else 0)
        asked = [str(q) for q in questions.column(p.question_column).to_pylist()]
        scores, ids = rag.search(index, rag.embed_texts(models.sentence_encoder(str(path), device), asked, 32),
                                 p.top_k)
        texts, doc_ids = chunks.column("text").to_pylist(), chunks.column("doc_id").to_pylist()
        out = questions
        for name, values, kind in (
                ("doc_ids", [[doc_ids[i] for i in row] for row in ids], pa.list_(pa.string())),
                ("chunks", ids, pa.list_(pa.int64())), ("scores", scores, pa.list_(pa.float32())),
                ("context", ["\n\n".join(texts[i] for i in row) for row in ids], pa.string())):
            out = out.append_column(name, pa.array(values, kind))
        metrics: dict[str, Any] = {"questions": out.num_rows, "top_k": p.top_k, "index_hash": index_hash}
        if p.generate is not None:
            g = p.generate
            template = g.template or "Context:\n{context}\n\nQuestion: {question}\nAnswer:"
            prompts = [template.format(question=q, context=c) for q, c in
                       zip(asked, out.column("context").to_pylist(), strict=True)]
            out = out.append_column("prompt", pa.array(prompts, pa.string()))
            generator = generate.Generator(g.model, g.sampling.model_dump(), "prompt", g.dedup,
                                           call.unit.num_gpus if call.unit else 0, home=call.home)
            with Completions("prompt", ctx.artifact_dir / "responses.json") as completions:
                for i in range(0, out.num_rows, g.batch_size):
                    completions.add(generator(out.slice(i, g.batch_size)))
                out = completions.table(out)
            metrics.update(completions.metrics)
        _write(ctx, "metrics.json", metrics)
        return out
