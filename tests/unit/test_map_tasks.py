"""The map's task bodies, called in-process (no Ray): count and hash, split, gather in item order."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fabric.execute.mapping import COUNT_KEY, count_items, gather, split_items
from fabric.execute.untrusted import decode_report
from fabric.execute.worker import NodeFailure
from fabric.types import MapResults

pytestmark = pytest.mark.timeout(30)


def test_count_hashes_each_item_and_a_table_has_its_rows_as_items():
    digests = decode_report(count_items("m", 1, "x", [1, 2, 1])).digests or {}
    assert digests[COUNT_KEY] == "3" and digests["0"] == digests["2"] != digests["1"]
    table = pa.table({"a": [1, 2]})
    assert (decode_report(count_items("m", 1, "x", table)).digests or {})[COUNT_KEY] == "2"
    assert split_items("m", "x", 0, table) == ({"a": 1}, {"a": 2})


def test_a_value_that_is_not_a_list_fails_the_map_naming_its_input():
    with pytest.raises(NodeFailure) as caught:
        count_items("m", 1, "points", {"a": 1})
    assert caught.value.error.type == "MapInputError" and "'points'" in caught.value.error.message


def test_split_and_gather_keep_item_order_batches_and_missing_items():
    assert split_items("m", "x", 2, [1, 2, 3]) == ([1, 2], [3])
    assert split_items("m", "x", 0, [7]) == 7
    out = gather(1, True, (2, 3), [10, 20], [50])  # children [0, 1] and [4]; items 2 and 3 failed
    assert isinstance(out, MapResults) and out == [10, 20, 50] and out.missing == (2, 3)
    low, high = gather(2, False, (), 1, 2, "a", "b")  # two outs, two children
    assert (low, high) == ([1, 2], ["a", "b"])
    joined = gather(1, False, (), pa.table({"v": [1]}), pa.table({"v": [2]}))
    assert isinstance(joined, pa.Table) and joined.column("v").to_pylist() == [1, 2]
