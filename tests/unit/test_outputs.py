"""Persisted node outputs round-trip through the artifact store (local dir; pyarrow.fs for URIs)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fabric.execute.outputs import has_outputs, load_outputs, persist_outputs

pytestmark = pytest.mark.timeout(30)


def test_tables_and_values_round_trip(tmp_path):
    table = pa.table({"x": [1, 2, 3]})
    root = str(tmp_path / "artifacts")
    assert not has_outputs(root, "s1", "n")
    persist_outputs(root, "s1", "n", {"table": table, "model": {"coef": [0.5]}, "nothing": None})
    assert has_outputs(root, "s1", "n")
    loaded_table, model, nothing = load_outputs(root, "s1", "n", ["table", "model", "nothing"])
    assert loaded_table.equals(table) and model == {"coef": [0.5]} and nothing is None
    assert load_outputs(root, "s1", "n", ["model"]) == {"coef": [0.5]}
    assert (tmp_path / "artifacts/s1/n/outputs/table.arrow").exists()


def test_a_uri_root_works_through_pyarrow_fs(tmp_path):
    root = f"file://{tmp_path}/uri-root"
    persist_outputs(root, "s2", "n", {"v": 42, "fn": lambda x: x + 1})  # a lambda needs cloudpickle
    value, fn = load_outputs(root, "s2", "n", ["v", "fn"])
    assert value == 42 and fn(1) == 2
