"""An append-only file of lines, rotated by size (`events.jsonl` → `.1` → … → `.N`, the oldest dropped), as
`logging.handlers.RotatingFileHandler` does, for batches of lines. Every line written lands whole in exactly
one file: a line is never split across a rotation, and a rotation loses nothing but the file past `backups`."""

from __future__ import annotations

import os
import threading
from pathlib import Path


class RotatingLines:
    """`write(lines)` appends; a file is rotated before a line that would take it past `max_bytes` (a single
    line larger than that gets a file of its own). `backups` older files are kept; 0 keeps none."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backups: int) -> None:
        if max_bytes <= 0 or backups < 0:
            raise ValueError(f"max_bytes must be > 0 and backups >= 0, not {max_bytes} and {backups}")
        self.path, self.max_bytes, self.backups = Path(path), max_bytes, backups
        self._lock = threading.Lock()

    def files(self) -> list[Path]:
        """Every file that exists, oldest first: the order their lines were written in."""
        older = [self._numbered(n) for n in range(self.backups, 0, -1)]
        return [p for p in (*older, self.path) if p.exists()]

    def write(self, lines: list[str]) -> None:
        """Append lines (each without its newline); one open and one write per file touched."""
        if not lines:
            return
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            size = self.path.stat().st_size if self.path.exists() else 0
            chunk: list[bytes] = []
            for line in lines:
                data = (line + "\n").encode()
                if size + len(data) > self.max_bytes and (size or chunk):
                    self._append(chunk)  # what fits goes to the current file first, then it is rotated
                    self._rotate()
                    chunk, size = [], 0
                chunk.append(data)
                size += len(data)
            self._append(chunk)

    def _append(self, chunk: list[bytes]) -> None:
        if chunk:
            with open(self.path, "ab") as out:
                out.write(b"".join(chunk))

    def _rotate(self) -> None:
        if not self.path.exists():
            return
        if self.backups == 0:
            self.path.unlink()
            return
        self._numbered(self.backups).unlink(missing_ok=True)
        for n in range(self.backups - 1, 0, -1):
            if self._numbered(n).exists():
                os.replace(self._numbered(n), self._numbered(n + 1))
        os.replace(self.path, self._numbered(1))  # a rename: the file's lines move whole, none is rewritten

    def _numbered(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")


__all__ = ["RotatingLines"]
