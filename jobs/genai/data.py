"""Synthetic inputs of the genai example: prompts with duplicates, documents (a few changed per `revision`), and
questions that are near-duplicates of planted documents."""

from __future__ import annotations

import pyarrow as pa

from jobs.genai.tiny import WORDS


def prompts(n: int = 24, distinct: int = 6) -> pa.Table:
    """`n` prompts cycling over `distinct` texts, so a batch holds duplicates."""
    texts = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(3 + i % 3)) for i in range(distinct)]
    return pa.table({"id": list(range(n)), "prompt": [texts[(i // 2 + i // 8) % distinct] for i in range(n)]})


def documents(n: int = 40, revision: int = 0, changed: int = 3) -> pa.Table:
    """`n` documents of 20 words; revision r > 0 appends a word to `changed` of them (the same ones each time)."""
    texts = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(20)) + f" doc{i}" for i in range(n)]
    for k in range(changed if revision else 0):
        i = (k * 11 + 3) % n
        texts[i] += f" rev{revision}"
    return pa.table({"id": [f"d{i}" for i in range(n)], "text": texts})


def questions(documents: pa.Table, planted: tuple[int, ...] = (5, 12, 21, 28)) -> pa.Table:
    """A question per planted document: its text without the first word (a near-duplicate), and the answer."""
    texts = documents.column("text").to_pylist()
    ids = documents.column("id").to_pylist()
    return pa.table({"question": [" ".join(texts[i].split()[1:]) for i in planted],
                     "expected": [ids[i] for i in planted]})


def recall(answers: pa.Table) -> dict[str, float]:
    """The report: recall of the expected document in each question's top-k, and the answer counts."""
    hits = [expected in found for expected, found in zip(answers.column("expected").to_pylist(),
                                                         answers.column("doc_ids").to_pylist(), strict=True)]
    report = {"questions": float(len(hits)), "recall_at_k": sum(hits) / max(1, len(hits))}
    if "completion_tokens" in answers.column_names:
        report["completion_tokens"] = float(sum(answers.column("completion_tokens").to_pylist()))
    return report


def report(answers: pa.Table) -> str:
    """The run's report as JSON: recall at k and token counts."""
    import json

    return json.dumps(recall(answers))


def sft_pairs(n: int = 16, repeat: int = 1) -> pa.Table:
    """A memorisable fine-tuning set (`prompt`, `completion`): `n` fixed prompts, each with one fixed answer,
    the whole set `repeat` times."""
    prompts = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 3 + 1) % len(WORDS)]} ?" for i in range(n)]
    answers = [f" {WORDS[(i * 5 + 2) % len(WORDS)]} {WORDS[(i * 7 + 3) % len(WORDS)]}" for i in range(n)]
    return pa.table({"prompt": prompts * repeat, "completion": answers * repeat})


def dpo_pairs(n: int = 16) -> pa.Table:
    """Preference pairs (`prompt`, `chosen`, `rejected`): the SFT answer is chosen, a shifted one rejected."""
    pairs = sft_pairs(n)
    answers = pairs.column("completion").to_pylist()
    return pa.table({"prompt": pairs.column("prompt"), "chosen": answers, "rejected": answers[1:] + answers[:1]})
