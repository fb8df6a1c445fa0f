"""Tests of resource quantity and duration parsing."""

from __future__ import annotations

import math
import re

import pytest
from pydantic import BaseModel, ValidationError

from fabric.spec.quantities import Cpu, Duration, Gpu, Memory, parse_cpu, parse_duration, parse_gpu, parse_mem


@pytest.mark.parametrize(("value", "expected"), [
    ("4", 4.0), ("500m", 0.5), (0.5, 0.5), (2, 2.0), ("1.5", 1.5), ("250m", 0.25), ("0", 0.0), (" 8 ", 8.0),
])
def test_parse_cpu(value: object, expected: float) -> None:
    result = parse_cpu(value)
    assert result == expected
    assert isinstance(result, float)


@pytest.mark.parametrize(("value", "expected"), [
    ("16Gi", 16 * 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), ("1.5Gi", 3 * 2**29), ("100M", 10**8),
    ("1Ki", 1024), ("1k", 1000), (1024, 1024), ("2048", 2048), ("1Ti", 2**40), ("1.5k", 1500),
])
def test_parse_mem(value: object, expected: int) -> None:
    result = parse_mem(value)
    assert result == expected
    assert isinstance(result, int)


@pytest.mark.parametrize(("value", "expected"), [(0.25, 0.25), (1, 1.0), (2, 2.0), ("0.5", 0.5)])
def test_parse_gpu(value: object, expected: float) -> None:
    assert parse_gpu(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0), ("500ms", 0.5), ("1h30m", 5400.0),
    (30, 30.0), (1.5, 1.5), ("45", 45.0), ("1.5h", 5400.0),
])
def test_parse_duration(value: object, expected: float) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("parse", [parse_cpu, parse_mem, parse_gpu, parse_duration])
@pytest.mark.parametrize("bad", ["abc", "", "4x", True, False, None, [1], float("nan"), float("inf"),
                                 "1e3", "--1"])
def test_unparsable_values_are_rejected(parse: object, bad: object) -> None:
    with pytest.raises(ValueError, match="cannot parse"):
        parse(bad)  # type: ignore[operator]


@pytest.mark.parametrize("parse", [parse_cpu, parse_mem, parse_gpu, parse_duration])
@pytest.mark.parametrize("bad", [-1, -0.5, "-1"])
def test_negative_values_are_rejected(parse: object, bad: object) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse(bad)  # type: ignore[operator]


def test_cpu_message_is_helpful() -> None:
    with pytest.raises(ValueError) as info:
        parse_cpu("abc")
    assert str(info.value) == "cannot parse 'abc' as a CPU quantity: use '4', '500m' or 0.5"


@pytest.mark.parametrize(("parse", "bad"), [
    (parse_cpu, 100_001), (parse_cpu, "200000"), (parse_gpu, 10_001), (parse_mem, 2**60 + 1),
    (parse_mem, "2Ei"),
    (parse_duration, "366d"), (parse_duration, 10**400), (parse_cpu, "9" * 500),
])
def test_absurdly_large_values_are_rejected(parse: object, bad: object) -> None:
    with pytest.raises(ValueError, match="too large"):
        parse(bad)  # type: ignore[operator]


def test_limits_themselves_are_accepted() -> None:
    assert parse_cpu(100_000) == 100_000.0
    assert parse_gpu(10_000) == 10_000.0
    assert parse_mem("1Ei") == 2**60
    assert parse_duration("365d") == 365 * 86400.0


def test_annotated_types_normalize_and_publish_both_forms() -> None:
    class Box(BaseModel):
        cpu: Cpu
        mem: Memory
        gpu: Gpu
        timeout: Duration

    box = Box(cpu="500m", mem="1Gi", gpu="0.5", timeout="1h30m")
    assert (box.cpu, box.mem, box.gpu, box.timeout) == (0.5, 2**30, 0.5, 5400.0)
    with pytest.raises(ValidationError, match="CPU quantity"):
        Box(cpu="lots", mem=1, gpu=1, timeout=1)
    props = Box.model_json_schema()["properties"]
    for name in ("cpu", "mem", "gpu", "timeout"):
        kinds = {branch["type"] for branch in props[name]["anyOf"]}
        assert "string" in kinds and kinds & {"number", "integer"}
        number = next(b for b in props[name]["anyOf"] if b["type"] != "string")
        assert number["minimum"] == 0
    mem_pattern = next(b["pattern"] for b in props["mem"]["anyOf"] if b["type"] == "string")
    assert re.match(mem_pattern, "16Gi") and not re.match(mem_pattern, "16 gigs")
    assert not math.isnan(box.cpu)
