"""A pipeline's cron schedule as users write it: cron with a time zone, params, start/end, catch-up, pause."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fabric.errors import ErrorCode, Problem, SpecError
from fabric.spec.problems import problems_from_validation_error

SCHEDULE_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


class CatchUp(StrEnum):
    """Ticks missed while the registry was down (or busy): fire none of them, only the latest, or all."""

    NONE = "none"
    LATEST = "latest"
    ALL = "all"


def _fail(message: str, fix: str) -> PydanticCustomError:
    return PydanticCustomError("spec_value", message, {"fix": fix})


def cron_module() -> Any:
    """croniter (the `schedule` extra), or a clear error saying how to get it."""
    try:
        import croniter
    except ImportError:  # pragma: no cover - the extra is part of every install that schedules
        raise SpecError.from_problems([Problem(ErrorCode.SPEC_FIELD, "cron", "schedules need croniter",
                                               "pip install 'fabric-ray[schedule]'")], what="schedule") from None
    return croniter


class ScheduleSpec(BaseModel):
    """One schedule of a registered pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SCHEDULE_NAME_PATTERN)
    cron: str = Field(description="Five fields: minute hour day-of-month month day-of-week ('0 6 * * MON-FRI').")
    timezone: str = Field("UTC", description="IANA time zone the cron reads in, e.g. 'America/New_York'.")
    params: dict[str, JsonValue] = Field(default_factory=dict, description="Pipeline params of every run.")
    version: int | None = Field(None, ge=1, description="The pipeline version to run (default: the latest).")
    start: dt.datetime | None = Field(None, description="No tick before this (in the schedule's time zone).")
    end: dt.datetime | None = Field(None, description="No tick after this.")
    catch_up: CatchUp = Field(CatchUp.LATEST, description="Ticks missed while down: none, latest or all.")
    max_catch_up: int = Field(10, ge=1, le=1000, description="With catch_up all: at most this many (the newest).")
    paused: bool = False

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        if len(cron.split()) != 5 or not cron_module().croniter.is_valid(cron):
            raise _fail(f"{cron!r} is not a valid cron expression",
                        "use five fields: minute hour day-of-month month day-of-week, e.g. '*/5 * * * *'")
        return cron

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise _fail(f"{zone!r} is not a known time zone", "use an IANA name like 'Europe/London' or 'UTC'") \
                from None
        return zone

    @model_validator(mode="after")
    def _end_after_start(self) -> ScheduleSpec:
        if self.start is not None and self.end is not None and self.aware(self.end) <= self.aware(self.start):
            raise PydanticCustomError("spec_value", "end must be after start",
                                      {"fix": "give an end later than start, or leave end out"})
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def aware(self, moment: dt.datetime) -> dt.datetime:
        """A datetime with no zone read in the schedule's zone."""
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=self.zone)


def parse_schedule(raw: Mapping[str, Any] | ScheduleSpec) -> ScheduleSpec:
    """A validated schedule; SpecError names every bad field (`cron`, `timezone`, `end`, ...)."""
    if isinstance(raw, ScheduleSpec):
        return raw
    if not isinstance(raw, Mapping):
        raise SpecError.from_problems([Problem(ErrorCode.SPEC_FIELD, "", "a schedule must be a mapping",
                                               "pass {'name': 'nightly', 'cron': '0 6 * * *'}")], what="schedule")
    try:
        return ScheduleSpec.model_validate(dict(raw))
    except ValidationError as exc:
        problems = problems_from_validation_error(exc, ScheduleSpec, ErrorCode.SPEC_FIELD)
        # The end/start check is on the whole model: name the field it is about.
        problems = [p if p.where or "end must be" not in p.message else
                    Problem(p.code, "end", p.message, p.fix) for p in problems]
        raise SpecError.from_problems(problems, what="schedule") from None
