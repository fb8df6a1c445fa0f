"""A node output that names a file on the worker's own disk is spotted, and the warning says what to do."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from fabric.errors import ErrorCode
from fabric.execute.localpath import local_file_outputs, local_path_warning


def test_existing_local_files_are_reported_and_everything_else_is_not(tmp_path: Path) -> None:
    data = tmp_path / "prices.parquet"
    data.write_bytes(b"x")
    slots = ["a", "b", "c", "d", "e", "f", "g", "h"]
    values = [str(data), data, tmp_path, "hello", str(tmp_path / "missing.parquet"),
              "s3://bucket/prices.parquet", pa.table({"x": [1]}), "bad\0name"]
    assert local_file_outputs(slots, values) == [("a", str(data)), ("b", str(data)), ("c", str(tmp_path))]


def test_a_bare_word_that_happens_to_be_a_file_in_the_cwd_is_not_a_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok").write_text("x")
    assert local_file_outputs(["a"], ["ok"]) == []
    assert local_file_outputs(["a"], ["./ok"]) == [("a", "./ok")]


def test_the_warning_names_the_code_the_out_and_the_two_fixes() -> None:
    text = local_path_warning("make_data", "prices_path", "/tmp/x.parquet")
    assert text.startswith(f"[{ErrorCode.LOCAL_PATH_OUTPUT}]")
    assert "'prices_path'" in text and "/tmp/x.parquet" in text
    assert "Return the table" in text and "fabric.context().artifact_dir" in text
