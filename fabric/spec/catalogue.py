"""How a registered pipeline runs: max_active_runs and the overlap policy, validated at the boundary."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fabric.errors import ErrorCode, Problem, SpecError
from fabric.spec.problems import problems_from_validation_error

PIPELINE_LABEL = "fabric.pipeline"  # the labels a catalogue run carries: its pipeline and version
VERSION_LABEL = "fabric.pipeline_version"


class Overlap(StrEnum):
    """What starting a run does when `max_active_runs` runs of the pipeline are already running."""

    SKIP = "skip"  # start nothing, and say so
    CANCEL_OLDER = "cancel_older"  # cancel the oldest running ones to make room, then start
    QUEUE = "queue"  # wait for a run to end, then start (at most schedule/startqueue.MAX_QUEUED wait)


class PipelineOptions(BaseModel):
    """Run options registered with a pipeline version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_active_runs: int | None = Field(None, ge=1, le=10_000, description="At most this many runs of the "
                                                                          "pipeline at once (None: no limit).")
    overlap: Overlap = Field(Overlap.SKIP, description="When the limit is reached: skip the new run, cancel "
                                                       "the oldest running one(s), or queue it (bounded).")


def parse_pipeline_options(raw: Mapping[str, Any] | PipelineOptions | None) -> PipelineOptions:
    """Validated options (the defaults for None); SpecError names the field."""
    if raw is None:
        return PipelineOptions()
    if isinstance(raw, PipelineOptions):
        return raw
    if not isinstance(raw, Mapping):
        raise SpecError.from_problems([Problem(ErrorCode.SPEC_FIELD, "", "pipeline options must be a mapping",
                                               "pass {'max_active_runs': 1, 'overlap': 'skip'}")],
                                      what="pipeline options")
    try:
        return PipelineOptions.model_validate(dict(raw))
    except ValidationError as exc:
        problems = problems_from_validation_error(exc, PipelineOptions, ErrorCode.SPEC_FIELD)
        raise SpecError.from_problems(problems, what="pipeline options") from None
