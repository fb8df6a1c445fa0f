"""Paging the submission list: the opaque cursor, the `(created_at, submission_id)` order, and `Page`.

Submissions are listed newest first by `(created_at, submission_id)`, a total order: several
submissions may share a timestamp, and a cursor made of the timestamp alone would skip or repeat
them across pages. The cursor is that pair, base64url-encoded, so clients treat it as opaque.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable
from typing import Any, TypeVar

from fabric.errors import ErrorCode, FabricError

Key = tuple[float, str]  # (created_at, submission_id): the list's order, newest first
T = TypeVar("T")


class Page(list[dict[str, Any]]):
    """One page of the submission list (a plain list of items) with the cursor of the next page,
    None on the last page."""

    def __init__(self, items: Iterable[dict[str, Any]] = (), next_cursor: str | None = None) -> None:
        super().__init__(items)
        self.next_cursor = next_cursor


def encode_cursor(created_at: float, submission_id: str) -> str:
    """The opaque cursor that starts the page after the item `(created_at, submission_id)`."""
    raw = json.dumps([created_at, submission_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    """The key a cursor stands for; a cursor that fabric did not make is a SPEC_FIELD error on `cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, submission_id = json.loads(raw)
        if isinstance(created_at, bool) or not isinstance(created_at, int | float) or not math.isfinite(created_at):
            raise ValueError("created_at")
        if not isinstance(submission_id, str):
            raise ValueError("submission_id")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise FabricError(f"{cursor[:80]!r} is not a cursor of this list", code=ErrorCode.SPEC_FIELD,
                          where="cursor", fix="pass the next_cursor of the previous page as it was, or none") from None
    return float(created_at), submission_id


def next_cursor(items: list[dict[str, Any]], limit: int) -> str | None:
    """The cursor after a full page's last item; None when the page is short (it was the last)."""
    if not items or len(items) < limit:
        return None
    last = items[-1]
    return encode_cursor(last["created_at"], last["submission_id"])


def newest_first(records: Iterable[T], key: Any, limit: int, before: Key | None = None) -> list[T]:
    """`limit` records strictly after `before` in newest-first `(created_at, submission_id)` order;
    `key(record)` gives a record's key. For stores that page in memory; SQL stores use the same order."""
    ordered = sorted(records, key=key, reverse=True)
    return [r for r in ordered if before is None or key(r) < before][:limit]
