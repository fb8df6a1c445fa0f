"""The genai kinds without Ray: submit-time checks, the splitter, generation with duplicate merging and a fixed
seed, embeddings with reuse by content hash, and index recall, on tiny models built in the test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fabric.errors import SpecError
from fabric.kinds import kind_checks
from fabric.kinds.rag import EmbedKind, RagIndexKind, RagQueryKind
from fabric.ml.genai.collect import Completions
from fabric.ml.genai.generate import Generator, batch_seed, unique_order
from fabric.ml.genai.models import ModelNotFound, resolve
from fabric.ml.genai.rag import build_index, chunk_table, split_text
from fabric.plan import compile_plan
from fabric.plan.call import NodeCall
from fabric.spec import load_spec

pytestmark = pytest.mark.timeout(180)


def problems(node: dict[str, Any], ins: int = 1) -> list[tuple[str, str]]:
    upstream = [{"id": f"src{i}", "kind": "python_task", "entrypoint": "tests.nodes:make_table", "outs": [f"t{i}"]}
                for i in range(ins)]
    spec = {"version": 1, "pipeline_id": "genai_checks", "nodes": [
        *upstream, {"id": "gen", "ins": [f"t{i}" for i in range(ins)], **node}],
        "edges": [{"from": f"src{i}", "to": "gen"} for i in range(ins)]}
    try:
        compile_plan(load_spec(spec), runnable=kind_checks())
    except SpecError as error:
        return [(p.where, p.message) for p in error.problems]
    return []


def test_sampling_params_are_checked_at_submit_naming_each_bad_key():
    assert problems({"kind": "llm_generate", "params": {"model": "/m", "sampling": {"temperature": 0.7}}}) == []
    found = dict(problems({"kind": "llm_generate", "params": {
        "model": "/m", "sampling": {"temprature": 0.7, "top_p": 2, "max_new_tokens": 0}, "batchsize": 3}}))
    assert found["nodes[1].params.sampling.temprature"] == "llm_generate: unknown param"
    assert "less than or equal to 1" in found["nodes[1].params.sampling.top_p"]
    assert "greater than or equal to 1" in found["nodes[1].params.sampling.max_new_tokens"]
    assert found["nodes[1].params.batchsize"] == "llm_generate: unknown param"
    assert dict(problems({"kind": "llm_generate", "params": {}}))["nodes[1].params.model"] == \
        "llm_generate: Field required"
    assert "nodes[1].ins" in dict(problems({"kind": "rag_query", "params": {"model": "/m"}}, ins=1))
    assert problems({"kind": "rag_query", "params": {"model": "/e", "generate": {"model": "/m"}}}, ins=2) == []
    bad = dict(problems({"kind": "embed", "params": {"model": "/e", "chunk_size": 64, "chunk_overlap": 64}}))
    assert "chunk_overlap" in bad["nodes[1].params.chunk_overlap"]


def test_the_splitter_keeps_chunks_under_size_on_word_boundaries_with_overlap():
    text = " ".join(f"w{i:03d}" for i in range(100))  # 100 words of 4 chars + spaces: 499 chars
    chunks = split_text(text, 50, 10)
    assert all(len(c) <= 50 for c in chunks)
    assert all(not c.startswith(" ") and not c.endswith(" ") and c[0] == "w" for c in chunks)
    words = [c.split() for c in chunks]
    assert words[0][0] == "w000" and words[-1][-1] == "w099"
    for before, after in zip(words, words[1:], strict=False):
        assert after[0] in before and after[0] != before[0]  # overlaps the previous chunk, and moves forward
    assert split_text("", 50, 10) == [] and split_text("x" * 120, 50, 0) == ["x" * 50, "x" * 50, "x" * 20]
    with pytest.raises(ValueError, match="chunk_overlap"):
        split_text(text, 10, 10)
    table = chunk_table(pa.table({"id": [1, 2], "text": [text, "short"]}), "id", "text", 50, 10)
    assert table.column("doc_id").to_pylist().count("2") == 1 and table.num_rows == len(chunks) + 1


def test_duplicate_prompts_are_generated_once_and_fanned_out(tiny_lm, tmp_path):
    assert unique_order(["a", "b", "a", "c", "b"]) == (["a", "b", "c"], [0, 1, 0, 2, 1])
    prompts = ["alpha beta", "market risk", "alpha beta", "bond", "alpha beta", "market risk"]
    generator = Generator(str(tiny_lm), {"max_new_tokens": 6})
    calls: list[int] = []
    real = generator.generate
    generator.generate = lambda ps: calls.append(len(ps)) or real(ps)  # type: ignore[method-assign]
    out = generator(pa.table({"prompt": prompts, "id": list(range(6))}))
    assert calls == [3]  # three distinct prompts, one generation each
    assert out.column("merged").to_pylist() == [False, False, True, False, True, True]
    completions = out.column("completion").to_pylist()
    assert completions[0] == completions[2] == completions[4] and completions[1] == completions[5]
    collected = Completions("prompt", tmp_path / "responses.json")
    for start in (0, 2, 5):  # as Ray Data hands them back: blocks in order, of any sizes
        collected.add(out.slice(start, {0: 2, 2: 3, 5: 1}[start]))
    stats = collected.metrics
    assert (stats["prompts"], stats["generations"], stats["merged"]) == (6, 3, 3)
    assert stats["completion_tokens"] == sum(out.column("completion_tokens").to_pylist())
    assert sum(stats["finish_reasons"].values()) == 6
    assert collected.table(out).equals(out)  # every row, in order, from its memory-mapped file
    assert all(0 < n <= 6 for n in out.column("completion_tokens").to_pylist())
    assert set(out.column("finish_reason").to_pylist()) <= {"stop", "length"}
    assert out.column("id").to_pylist() == list(range(6))  # the other columns pass through, in order
    plain = Generator(str(tiny_lm), {"max_new_tokens": 6}, dedup=False)(pa.table({"prompt": prompts}))
    assert plain.column("completion").to_pylist() == completions and not any(plain.column("merged").to_pylist())
    long = generator(pa.table({"prompt": ["alpha " * 400]}))  # past the model's 256 positions: its end is kept
    assert long.column("prompt_tokens").to_pylist()[0] == 256 - 6
    responses = json.loads((tmp_path / "responses.json").read_text())
    assert [r["index"] for r in responses] == list(range(6)) and responses[2]["merged"] is True
    assert [r["completion"] for r in responses] == completions
    import tempfile

    spills = set(Path(tempfile.gettempdir()).glob("fabric-completions-*"))
    with pytest.raises(RuntimeError), Completions("prompt", tmp_path / "failed.json") as failing:
        failing.add(out.slice(0, 2))
        raise RuntimeError("the generation failed")  # no spill file is left behind
    assert set(Path(tempfile.gettempdir()).glob("fabric-completions-*")) == spills
    nothing = Completions("prompt", tmp_path / "none.json")
    empty = nothing.table(pa.table({"prompt": pa.array([], pa.string())}))
    assert empty.num_rows == 0 and "completion" in empty.column_names
    assert json.loads((tmp_path / "none.json").read_text()) == []


def test_sampling_is_deterministic_under_a_fixed_seed(tiny_lm):
    prompts = pa.table({"prompt": ["alpha", "beta gamma", "risk"]})
    sampling = {"max_new_tokens": 12, "temperature": 1.5, "seed": 7}
    first = Generator(str(tiny_lm), sampling)(prompts).column("completion").to_pylist()
    again = Generator(str(tiny_lm), sampling)(prompts).column("completion").to_pylist()
    other = Generator(str(tiny_lm), {**sampling, "seed": 8})(prompts).column("completion").to_pylist()
    assert first == again and first != other
    assert batch_seed(7, ["a"]) == batch_seed(7, ["a"]) != batch_seed(8, ["a"])
    stop = first[0][3:5]  # the same batch (hence the same seed): the same tokens, cut at the stop string
    stopped = Generator(str(tiny_lm), {**sampling, "stop": [stop]})(prompts)
    assert stopped.column("finish_reason").to_pylist()[0] == "stop"
    assert stopped.column("completion").to_pylist()[0] == first[0][:first[0].find(stop)]


def test_a_missing_model_is_named(tmp_path):
    with pytest.raises(ModelNotFound, match=str(tmp_path / "nope")):
        resolve(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve(str(tmp_path / "empty"))


def _call(kind: str, params: dict[str, Any], home: str, ins: tuple[str, ...] = ("docs",)) -> NodeCall:
    return NodeCall(submission_id="s", pipeline_id="p", node_id=kind, attempt=1, kind=kind, entrypoint=None,
                    params=params, input_names=ins, result_slots=("out",), declared_outs=(), home=home, team="t")


def _docs(n: int) -> pa.Table:
    from jobs.genai.tiny import WORDS

    texts = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(20)) for i in range(n)]
    return pa.table({"id": [f"d{i}" for i in range(n)], "text": texts})


def test_embed_reuses_unchanged_chunks_and_the_index_finds_planted_near_duplicates(tiny_encoder, tmp_path):
    from fabric.context import local_context

    params = {"model": str(tiny_encoder), "chunk_size": 400, "chunk_overlap": 0}
    docs = _docs(30)
    with local_context(tmp_path / "a") as ctx:
        first = EmbedKind().run(_call("embed", params, str(tmp_path)), {"docs": docs})
        metrics = json.loads((ctx.artifact_dir / "metrics.json").read_text())
    assert (metrics["chunks"], metrics["embedded"], metrics["reused"]) == (30, 30, 0)
    texts = docs.column("text").to_pylist()
    changed = docs.set_column(1, "text", pa.array([t + " hedge" if i in (3, 9, 17) else t
                                                   for i, t in enumerate(texts)]))
    with local_context(tmp_path / "b") as ctx:
        second = EmbedKind().run(_call("embed", params, str(tmp_path)), {"docs": changed})
        metrics = json.loads((ctx.artifact_dir / "metrics.json").read_text())
    assert (metrics["embedded"], metrics["reused"], metrics["documents_embedded"]) == (3, 27, 3)
    same = [i for i in range(30) if i not in (3, 9, 17)]
    assert [second.column("embedding")[i].as_py() for i in same] == [first.column("embedding")[i].as_py()
                                                                     for i in same]
    with local_context(tmp_path / "c") as ctx:
        index = RagIndexKind().run(_call("rag_index", {}, str(tmp_path)), {"docs": second})
        info = json.loads((ctx.artifact_dir / "index.json").read_text())
        assert (ctx.artifact_dir / "index.faiss").stat().st_size > 0
    assert info["count"] == 30 and info["dim"] == 64 and len(info["content_hash"]) == 32
    assert build_index(second, "x")[1] == build_index(second, "x")[1] != build_index(first, "x")[1]
    # Planted near-duplicates: each question is a document with one word dropped; its document is the top hit.
    planted = [5, 12, 21, 28]
    questions = pa.table({"question": [" ".join(texts[i].split()[1:]) for i in planted]})
    with local_context(tmp_path / "d"):
        found = RagQueryKind().run(_call("rag_query", {"model": str(tiny_encoder), "top_k": 3}, str(tmp_path),
                                         ("index", "questions")), {"index": index, "questions": questions})
    hits = found.column("doc_ids").to_pylist()
    assert all(len(h) == 3 for h in hits)
    recall = sum(f"d{i}" in hit for i, hit in zip(planted, hits, strict=True)) / len(planted)
    assert recall == 1.0
