"""A pack of map children writes their outputs as one file per report (fabric/execute/packs.py); each child's outputs
are found, loaded and reused from it as from a file of its own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fabric.execute import packs
from fabric.execute.chain import EXTERNAL, ChainCall, run_chain
from fabric.execute.outputs import has_outputs, load_outputs, read_output_files, remove_tree, write_output_file
from fabric.execute.packs import pack_bytes, pack_name
from tests.unit.test_fuse import call

pytestmark = pytest.mark.timeout(30)


def plus_one(x: int) -> int:
    return x + 1


def as_table(x: int) -> pa.Table:
    return pa.table({"x": [x]})


def a_generator(x: int) -> Any:
    return (x for _ in range(1))  # no pickler takes a generator: its outputs cannot be kept


def _pack(home: str, artifacts: str, entries: list[str], first: int = 0) -> ChainCall:
    members = tuple(replace(call(f"m[{first + i}]", f"tests.unit.test_output_packs:{entry}", home, "x"),
                            persist=(f"m[{first + i}]",), artifacts=artifacts)
                    for i, entry in enumerate(entries))
    return ChainCall(members, tuple(((EXTERNAL, i),) for i in range(len(entries))), independent=True)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_pack_writes_one_file_and_each_child_loads_its_own_values(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    outcomes, values = run_chain(_pack(str(tmp_path), str(artifacts), ["plus_one"] * 5), [1, 2, 3, 4, 5])
    assert [error for _, error in outcomes] == [None] * 5 and values == [2, 3, 4, 5, 6]
    files = _files(artifacts)
    assert len(files) == 1 and files[0].startswith("s/m[0]/outputs/pack-"), files
    for i in range(5):
        assert has_outputs(str(artifacts), "s", f"m[{i}]")
        assert load_outputs(str(artifacts), "s", f"m[{i}]", [f"m[{i}]"]) == i + 2
    assert not has_outputs(str(artifacts), "s", "m[5]")
    assert not has_outputs(str(artifacts), "s", "other[0]")


def test_a_child_with_a_table_persists_alone_and_one_whose_outputs_cannot_be_kept_fails_alone(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    entries = ["plus_one", "as_table", "a_generator", "plus_one"]
    outcomes, values = run_chain(_pack(str(tmp_path), str(artifacts), entries), [1, 2, 3, 4])
    assert outcomes[0][1] is None and outcomes[1][1] is None and outcomes[3][1] is None
    error = outcomes[2][1]
    assert error is not None and "could not be persisted" in error.message
    assert type(values[2]).__name__ == "NotRun"  # what reads it fails at once
    assert (artifacts / "s/m[1]/outputs/m[1].arrow").exists()
    assert load_outputs(str(artifacts), "s", "m[1]", ["m[1]"]).equals(pa.table({"x": [2]}))
    assert load_outputs(str(artifacts), "s", "m[3]", ["m[3]"]) == 5
    assert not has_outputs(str(artifacts), "s", "m[2]")


def test_a_success_is_reported_only_once_its_outputs_are_on_record(tmp_path: Path) -> None:
    artifacts = str(tmp_path / "artifacts")
    on_record_when_reported: list[bool] = []

    def report(items: list[tuple[str, int, Any]]) -> None:
        packs._found.clear()  # as a registry elsewhere would: nothing remembered
        on_record_when_reported.extend(has_outputs(artifacts, "s", node_id) for node_id, _, _ in items)

    run_chain(_pack(str(tmp_path), artifacts, ["plus_one"] * 6), list(range(6)), report)
    assert on_record_when_reported and all(on_record_when_reported)


def test_the_head_reads_a_childs_bytes_without_unpickling_and_ignores_entries_for_other_maps(tmp_path: Path) -> None:
    import pickle

    root = str(tmp_path)
    mine = pickle.dumps({"v": ("value", 1)})
    theirs = pickle.dumps({"v": ("value", "forged")})
    write_output_file(root, "s", "m[0]", pack_name(), pack_bytes([("m[0]", mine), ("other[0]", theirs)]))
    assert read_output_files(root, "s", "m[0]", ["v"]) == (mine, {})
    assert not has_outputs(root, "s", "other[0]")


def test_a_pack_written_after_a_miss_is_found_once_the_rescan_interval_passed(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    root = str(tmp_path)
    monkeypatch.setattr(packs, "RESCAN_AFTER_S", 3600.0)
    assert not has_outputs(root, "s2", "m[7]")
    write_output_file(root, "s2", "m[7]", pack_name(), pack_bytes([("m[7]", pickle.dumps({"v": ("value", 7)}))]))
    assert not has_outputs(root, "s2", "m[7]")  # looked for a moment ago: not again yet
    assert has_outputs(root, "s2", "m[8]") is False
    write_output_file(root, "s2", "m[8]", pack_name(), pack_bytes([("m[8]", pickle.dumps({"v": ("value", 8)}))]))
    assert has_outputs(root, "s2", "m[8]", fresh=True)  # a cache entry's node: known to have succeeded
    monkeypatch.setattr(packs, "RESCAN_AFTER_S", 0.0)
    assert has_outputs(root, "s2", "m[7]")
    assert remove_tree(root, "s2") == 2
    assert not has_outputs(root, "s2", "m[7]")  # gone with its submission's tree


def test_a_file_that_is_not_a_pack_is_not_read_as_one(tmp_path: Path) -> None:
    root = str(tmp_path)
    write_output_file(root, "s3", "m[0]", pack_name(), b"fabric-pack 1 99999999999\n{}")
    write_output_file(root, "s3", "m[1]", pack_name(), b"not a pack at all")
    assert not has_outputs(root, "s3", "m[0]") and not has_outputs(root, "s3", "m[1]")
