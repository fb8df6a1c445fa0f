"""Parsing of resource quantities and durations ("500m", "16Gi", "1h30m") into plain numbers."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

MAX_CPU = 100_000
MAX_GPU = 10_000
MAX_MEM = 2**60
MAX_DURATION = 365 * 86_400

# These patterns are also published in the JSON Schema, so they use only syntax that both
# Python `re` and ECMA-262 understand.
CPU_PATTERN = r"^[0-9]+(\.[0-9]+)?m?$"
MEM_PATTERN = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kKMGTPE])?$"
GPU_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+)$"

_MEM_UNITS: dict[str, int] = {
    "": 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_DURATION_UNITS: dict[str, Decimal] = {
    "ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600), "d": Decimal(86_400),
}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")


class QuantityError(ValueError):
    """A quantity that cannot be accepted; `fix` says what to write instead."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


def _as_decimal(value: Any, what: str, pattern: str, examples: str) -> tuple[Decimal, str]:
    """Split `value` into (number, unit suffix) or raise QuantityError; rejects bools, NaN and negatives."""
    fix = f"use {examples}"
    if isinstance(value, bool):
        raise QuantityError(f"cannot parse {value!r} as a {what}: a boolean is not a quantity, {fix}", fix)
    if isinstance(value, int):
        number, unit = Decimal(value), ""
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"cannot parse {value!r} as a {what}: it must be a finite number", fix)
        number, unit = Decimal(repr(value)), ""
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("-") and re.match(pattern, text[1:]):
            raise QuantityError(f"{what} must not be negative (got {value!r})", "use a value >= 0")
        if not re.match(pattern, text):
            raise QuantityError(f"cannot parse {value!r} as a {what}: {fix}", fix)
        match = re.match(r"^([0-9]+(?:\.[0-9]+)?)(.*)$", text)
        assert match is not None  # guaranteed by the pattern check above
        try:
            number = Decimal(match.group(1))
        except InvalidOperation as exc:  # pragma: no cover - the pattern only admits valid decimals
            raise QuantityError(f"cannot parse {value!r} as a {what}: {fix}", fix) from exc
        unit = match.group(2)
    else:
        raise QuantityError(f"cannot parse {value!r} as a {what}: expected a string or a number; {fix}", fix)
    if number < 0:
        raise QuantityError(f"{what} must not be negative (got {value!r})", "use a value >= 0")
    return number, unit


def _check_max(number: Decimal, limit: int, what: str, original: Any) -> None:
    if number > limit:
        raise QuantityError(f"{what} {original!r} is too large (at most {limit})",
                            f"use a value <= {limit}")


def parse_cpu(value: Any) -> float:
    """CPU cores as a float: "4" -> 4.0, "500m" -> 0.5, 0.5 -> 0.5."""
    what = "CPU quantity"
    number, unit = _as_decimal(value, what, CPU_PATTERN, "'4', '500m' or 0.5")
    if unit == "m":
        number = number / 1000
    _check_max(number, MAX_CPU, what, value)
    return float(number)


def parse_mem(value: Any) -> int:
    """Memory in bytes: "16Gi" -> 17179869184, "1G" -> 10**9, 1024 -> 1024; fractions round up."""
    what = "memory quantity"
    number, unit = _as_decimal(value, what, MEM_PATTERN, "'16Gi', '512Mi', '1G' or a number of bytes")
    number = number * _MEM_UNITS[unit]
    _check_max(number, MAX_MEM, what, value)
    return int(number.to_integral_value(rounding="ROUND_CEILING"))


def parse_gpu(value: Any) -> float:
    """GPUs as a float: 1 -> 1.0, "0.5" -> 0.5, 0.25 -> 0.25."""
    what = "GPU quantity"
    number, _ = _as_decimal(value, what, GPU_PATTERN, "1, 2 or a fraction like 0.25")
    _check_max(number, MAX_GPU, what, value)
    return float(number)


def parse_duration(value: Any) -> float:
    """Seconds as a float: "90s" -> 90, "15m" -> 900, "1h30m" -> 5400, "500ms" -> 0.5, 30 -> 30."""
    what = "duration"
    number, unit = _as_decimal(value, what, DURATION_PATTERN,
                               "'90s', '15m', '2h', '1d', '1h30m' or a number of seconds")
    if unit:
        text = str(value).strip()
        number = sum((Decimal(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text)), Decimal(0))
    _check_max(number, MAX_DURATION, what, value)
    return float(number)


def _schema(pattern: str, number_type: str, description: str) -> dict[str, Any]:
    return {
        "anyOf": [{"type": "string", "pattern": pattern}, {"type": number_type, "minimum": 0}],
        "description": description,
    }


Cpu = Annotated[float, BeforeValidator(parse_cpu),
                WithJsonSchema(_schema(CPU_PATTERN, "number", "CPU cores: '4', '500m' (0.5) or a number"))]
Memory = Annotated[int, BeforeValidator(parse_mem),
                   WithJsonSchema(_schema(MEM_PATTERN, "integer",
                                          "Bytes: '16Gi', '512Mi', '1G' (10^9) or a number of bytes"))]
Gpu = Annotated[float, BeforeValidator(parse_gpu),
                WithJsonSchema(_schema(GPU_PATTERN, "number", "GPUs: 1, 2 or a fraction like 0.25"))]
Duration = Annotated[float, BeforeValidator(parse_duration),
                     WithJsonSchema(_schema(DURATION_PATTERN, "number",
                                            "Seconds: '90s', '15m', '2h', '1d', '1h30m' or a number"))]
