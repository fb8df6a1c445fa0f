"""The submission list's opaque cursor: round trips, rejects what fabric did not make, and pages through
submissions that share a timestamp without skipping or repeating one, in both stores."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from fabric.errors import ErrorCode, FabricError
from fabric.record import MemoryStore, SqliteStore, SubmissionRecord
from fabric.record.page import Page, decode_cursor, encode_cursor, newest_first, next_cursor

pytestmark = pytest.mark.timeout(60)


def test_a_cursor_round_trips_exactly_and_is_opaque_text() -> None:
    for created_at, sid in [(1764713045.123456789, "run-1"), (0.0, ""), (1e-300, "ü/+=?&")]:
        cursor = encode_cursor(created_at, sid)
        assert decode_cursor(cursor) == (created_at, sid)
        assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize("bad", ["", "1764713045.5", "%%%", base64.urlsafe_b64encode(b"[1, 2]").decode(),
                                 base64.urlsafe_b64encode(b'["x", "a"]').decode(),
                                 base64.urlsafe_b64encode(b'[NaN, "a"]').decode(),
                                 base64.urlsafe_b64encode(b'[true, "a"]').decode(),
                                 base64.urlsafe_b64encode(b'{"a": 1}').decode(), "\u00e9\u00e9"])
def test_a_cursor_fabric_did_not_make_is_an_error_on_cursor(bad: str) -> None:
    with pytest.raises(FabricError) as caught:
        decode_cursor(bad)
    assert caught.value.code is ErrorCode.SPEC_FIELD and caught.value.where == "cursor"


def test_next_cursor_only_after_a_full_page() -> None:
    items = [{"submission_id": "b", "created_at": 2.0}, {"submission_id": "a", "created_at": 1.0}]
    assert next_cursor(items, 2) == encode_cursor(1.0, "a")
    assert next_cursor(items, 3) is None and next_cursor([], 1) is None
    page = Page(items, "c")
    assert page == items and page.next_cursor == "c"


def test_newest_first_pages_through_equal_timestamps() -> None:
    keys = [(5.0, f"s{i}") for i in range(7)] + [(4.0, "z"), (6.0, "a")]
    seen, before = [], None
    for _ in range(20):
        page = newest_first(keys, lambda k: k, 3, before)
        if not page:
            break
        seen += page
        before = page[-1]
    assert seen == sorted(keys, reverse=True)


def _record(sid: str, created_at: float) -> SubmissionRecord:
    return SubmissionRecord(submission_id=sid, pipeline_id=f"pipe-{sid[:1]}", spec={}, runtime_params={},
                            plan_hash="p", request_hash="r", created_at=created_at)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_both_stores_page_through_a_shared_timestamp_without_skips_or_repeats(kind: str, tmp_path: Path) -> None:
    store: Any = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    ids = [f"{c}{i:02d}" for c in "ab" for i in range(12)]
    for n, sid in enumerate(ids):
        # 24 submissions on three timestamps: every page boundary falls inside a run of equal timestamps.
        store.add_submission(_record(sid, 100.0 + n // 10))
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(30):  # bounded: a broken cursor fails the test instead of looping
        rows = store.list_submissions(limit=5, before=None if cursor is None else decode_cursor(cursor))
        items = [{"submission_id": r.submission_id, "created_at": r.created_at} for r in rows]
        seen += [i["submission_id"] for i in items]
        cursor = next_cursor(items, 5)
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 24
    assert seen == [sid for _, sid in sorted(((100.0 + n // 10, sid) for n, sid in enumerate(ids)), reverse=True)]
    assert [r.submission_id for r in store.list_submissions(search="pipe-b", limit=100)] == sorted(
        ids[12:], key=lambda s: (100.0 + ids.index(s) // 10, s), reverse=True)
    assert [r.submission_id for r in store.list_submissions(search="a03")] == ["a03"]
    if kind == "sqlite":
        store.close()
