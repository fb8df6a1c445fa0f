"""A backfill as users ask for it: a date range and step, the date param, params, at most N at once (validated)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fabric.errors import ErrorCode, Problem, SpecError
from fabric.spec.params import PARAM_NAME_PATTERN
from fabric.spec.problems import problems_from_validation_error

MAX_DATES = 1000  # one backfill starts at most this many runs: a decade of business days is two backfills
MAX_ACTIVE = 100
BACKFILL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
STEP = re.compile(r"^([1-9][0-9]{0,3})([dwb])$")  # N days, N weeks, N business days (Monday to Friday)


def _fail(message: str, fix: str) -> PydanticCustomError:
    return PydanticCustomError("spec_value", message, {"fix": fix})


def step_dates(start: dt.date, end: dt.date, step: str, cap: int = MAX_DATES + 1) -> list[dt.date]:
    """The dates from start to end (both included) every `step`; at most `cap` of them (the caller checks)."""
    match = STEP.match(step)
    if match is None:
        raise ValueError(f"{step!r} is not a step")
    count, unit = int(match[1]), match[2]
    out: list[dt.date] = []
    day = start
    if unit == "b":
        while day.weekday() >= 5:  # a business-day backfill starts at the first business day
            day += dt.timedelta(days=1)
    while day <= end and len(out) < cap:
        out.append(day)
        if unit == "b":
            left = count
            while left:
                day += dt.timedelta(days=1)
                left -= day.weekday() < 5
        else:
            day += dt.timedelta(days=count * (7 if unit == "w" else 1))
    return out


class BackfillSpec(BaseModel):
    """One backfill of a registered pipeline: a run per date, the date in `date_param`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: dt.date = Field(description="The first date (YYYY-MM-DD).")
    end: dt.date = Field(description="The last date, included; not before start.")
    step: str = Field("1d", description="Nd (days), Nw (weeks) or Nb (business days, Monday to Friday).")
    date_param: str = Field("as_of", pattern=PARAM_NAME_PATTERN,
                            description="The pipeline param each run's date goes into (a date or string param).")
    params: dict[str, JsonValue] = Field(default_factory=dict, description="The other params of every run.")
    max_active: int = Field(4, ge=1, le=MAX_ACTIVE, description="At most this many of its runs at once.")
    version: int | None = Field(None, ge=1, description="The pipeline version (default: the latest when it starts).")
    backfill_id: str | None = Field(None, pattern=BACKFILL_ID_PATTERN,
                                    description="Its name and idempotency key (the clients make one).")

    @field_validator("step")
    @classmethod
    def _valid_step(cls, step: str) -> str:
        if STEP.match(step) is None:
            raise _fail(f"{step!r} is not a step", "write a count and a unit: 1d (days), 1w (weeks), 1b "
                                                    "(business days), e.g. --step 7d")
        return step

    @model_validator(mode="after")
    def _range(self) -> BackfillSpec:
        if self.end < self.start:
            raise _fail(f"end {self.end} is before start {self.start}", "give an end on or after start")
        if len(step_dates(self.start, self.end, self.step)) > MAX_DATES:
            raise _fail(f"{self.start} to {self.end} every {self.step} is over {MAX_DATES} dates",
                        f"split it into backfills of at most {MAX_DATES} dates, or use a longer step")
        if self.date_param in self.params:
            raise _fail(f"params.{self.date_param} is the date param: each run's date goes there",
                        f"leave {self.date_param} out of params, or name another --date-param")
        return self

    def dates(self) -> list[dt.date]:
        return step_dates(self.start, self.end, self.step)


def _where(problem: Problem) -> Problem:
    """The whole-model checks name the field they are about."""
    if problem.where:
        return problem
    for marker, where in (("is before start", "end"), ("dates", "end"), ("is the date param", "params")):
        if marker in problem.message:
            return Problem(problem.code, where, problem.message, problem.fix)
    return problem


def parse_backfill(raw: Mapping[str, Any] | BackfillSpec) -> BackfillSpec:
    """A validated backfill; SpecError names every bad field (`end`, `step`, `max_active`, ...)."""
    if isinstance(raw, BackfillSpec):
        return raw
    if not isinstance(raw, Mapping):
        raise SpecError.from_problems([Problem(ErrorCode.SPEC_FIELD, "", "a backfill must be a mapping",
                                               "pass {'start': '2024-01-01', 'end': '2024-01-31'}")], what="backfill")
    try:
        return BackfillSpec.model_validate(dict(raw))
    except ValidationError as exc:
        problems = problems_from_validation_error(exc, BackfillSpec, ErrorCode.SPEC_FIELD)
        raise SpecError.from_problems([_where(p) for p in problems], what="backfill") from None
