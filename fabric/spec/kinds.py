"""The names of node kinds a DAG spec may use (which of them can run is decided at submit time)."""

from __future__ import annotations

KNOWN_KINDS: frozenset[str] = frozenset({
    "python_task",
    "sql",
    "trino_sql",
    "spark_sql",
    "flink_job",
    "materialize_view",
    "custom_crd",
    "ray_job",
    "train",
    "tune",
    "serve",
    "promote",
    "pipeline",  # another pipeline as a child DAG, expanded at submit (fabric/spec/subdags.py)
    "llm_generate",
    "embed",
    "rag_index",
    "rag_query",
    "llm_serve",
    "finetune",
})
