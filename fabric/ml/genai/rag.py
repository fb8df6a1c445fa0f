"""Documents to vectors to answers: the splitter, content hashes, the embedding cache, a faiss index carried
inside an Arrow table, and top-k search. No Ray here."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

INDEX_KEY = b"fabric.faiss"  # the serialized faiss index, in the index table's schema metadata
HASH_KEY = b"fabric.content_hash"
MODEL_KEY = b"fabric.model_hash"
_WORD = re.compile(r"\S+\s*")


def split_text(text: str, chunk_size: int, overlap: int) -> list[str]:
    """Chunks of at most `chunk_size` characters that end on whitespace (a longer word is cut), each starting
    about `overlap` characters before the previous one ended; empty text makes no chunk."""
    if overlap >= chunk_size:
        raise ValueError(f"chunk_overlap ({overlap}) must be smaller than chunk_size ({chunk_size})")
    words = [w for piece in _WORD.findall(text) for w in _cut(piece, chunk_size)]
    chunks: list[str] = []
    start = 0
    while start < len(words):
        size, end = 0, start
        while end < len(words) and size + len(words[end]) <= chunk_size:
            size += len(words[end])
            end += 1
        chunks.append("".join(words[start:end]).strip())
        if end >= len(words):
            break
        back, kept = end, 0  # step back over whole words worth `overlap` characters, always moving forward
        while back - 1 > start and kept + len(words[back - 1]) <= overlap:
            back -= 1
            kept += len(words[back])
        start = back
    return [c for c in chunks if c]


def _cut(piece: str, size: int) -> Iterator[str]:
    for i in range(0, len(piece), size):
        yield piece[i:i + size]


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def chunk_table(docs: Any, id_column: str, text_column: str, chunk_size: int, overlap: int) -> Any:
    """doc_id, chunk (its position), text and content_hash per chunk of each document."""
    import pyarrow as pa

    ids, texts = docs.column(id_column).to_pylist(), docs.column(text_column).to_pylist()
    rows: dict[str, list[Any]] = {"doc_id": [], "chunk": [], "text": [], "content_hash": []}
    for doc_id, text in zip(ids, texts, strict=True):
        for n, chunk in enumerate(split_text(str(text or ""), chunk_size, overlap)):
            rows["doc_id"].append(str(doc_id))
            rows["chunk"].append(n)
            rows["text"].append(chunk)
            rows["content_hash"].append(text_hash(chunk))
    return pa.table({"doc_id": pa.array(rows["doc_id"], pa.string()), "chunk": pa.array(rows["chunk"], pa.int32()),
                     "text": pa.array(rows["text"], pa.string()),
                     "content_hash": pa.array(rows["content_hash"], pa.string())})


class VectorCache:
    """Vectors by chunk content hash for one model, as append-only Parquet files in `root` (one per run that
    embedded something new: concurrent runs never write the same file). It holds hashes and vectors, no text."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self, wanted: set[str]) -> dict[str, list[float]]:
        import pyarrow.parquet as pq

        found: dict[str, list[float]] = {}
        for file in sorted(self.root.glob("*.parquet")) if self.root.is_dir() else []:
            table = pq.read_table(file)
            for h, vector in zip(table.column("content_hash").to_pylist(), table.column("embedding").to_pylist(),
                                 strict=True):
                if h in wanted:
                    found[h] = vector
        return found

    def add(self, hashes: list[str], vectors: list[list[float]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not hashes:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        table = pa.table({"content_hash": hashes, "embedding": pa.array(vectors, pa.list_(pa.float32()))})
        tmp = self.root / f".{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp)
        tmp.rename(self.root / f"{uuid.uuid4().hex}.parquet")


def embed_texts(encoder: Any, texts: list[str], batch_size: int) -> list[list[float]]:
    if not texts:
        return []
    vectors = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                             show_progress_bar=False)
    return [list(map(float, v)) for v in vectors]


def build_index(embedded: Any, model_hash: str) -> tuple[Any, str]:
    """(the index table: the chunks with the serialized faiss inner-product index in its metadata, its content
    hash). Vectors are unit length, so inner product is cosine similarity."""
    import faiss
    import numpy as np

    vectors = np.asarray(embedded.column("embedding").to_pylist(), dtype=np.float32)
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(vectors)
    blob = faiss.serialize_index(index).tobytes()
    chunks = embedded.select(["doc_id", "chunk", "text", "content_hash"])
    h = hashlib.blake2b(blob, digest_size=16)
    h.update(model_hash.encode())
    for value in chunks.column("content_hash").to_pylist():
        h.update(value.encode())
    digest = h.hexdigest()
    meta = {INDEX_KEY: blob, HASH_KEY: digest.encode(), MODEL_KEY: model_hash.encode()}
    return chunks.replace_schema_metadata(meta), digest


def index_of(table: Any) -> tuple[Any, str, str]:
    """(faiss index, content hash, model hash) from an index table `build_index` made."""
    import faiss
    import numpy as np

    meta = table.schema.metadata or {}
    if INDEX_KEY not in meta:
        raise ValueError("the index input is not a table rag_index made (no faiss index in its metadata)")
    index = faiss.deserialize_index(np.frombuffer(meta[INDEX_KEY], dtype=np.uint8))
    return index, meta[HASH_KEY].decode(), meta[MODEL_KEY].decode()


def search(index: Any, queries: list[list[float]], k: int) -> tuple[list[list[float]], list[list[int]]]:
    import numpy as np

    if not queries or index.ntotal == 0:
        return [[] for _ in queries], [[] for _ in queries]
    scores, ids = index.search(np.asarray(queries, dtype=np.float32), min(k, index.ntotal))
    return ([[float(s) for s, i in zip(row_s, row_i, strict=True) if i >= 0] for row_s, row_i in zip(scores, ids,
                                                                                                    strict=True)],
            [[int(i) for i in row if i >= 0] for row in ids])
