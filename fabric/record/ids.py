"""Whose submission an id names: a team's ids are its own namespace (`team:key`), so keys never meet across teams."""

from __future__ import annotations

from typing import Any

from fabric.errors import ConflictError, ErrorCode, FabricError
from fabric.plan.hashing import digest
from fabric.record.store import Store, SubmissionRecord
from fabric.types import new_submission_id, team_submission_id

MAX_ID_LENGTH = 128  # as runtime_params.submission_id: a team's id can be sent back as its key


def team_record(store: Store, submission_id: str, team: str | None) -> SubmissionRecord | None:
    """No team: the record of that id. A team: its own submission of that key (`team:key`), or a plain id of
    that team's from before ids were per team; never another team's (so it cannot even learn one exists)."""
    if team is None:
        return store.get_submission(submission_id)
    for stored in dict.fromkeys((team_submission_id(team, submission_id), submission_id)):
        record = store.get_submission(stored)
        if record is not None and record.team == team:
            return record
    return None


def request_hashes(spec: dict[str, Any], runtime: dict[str, Any]) -> tuple[str, ...]:
    """Digests of a request: the same submission is the same normalized spec and runtime params. A team's key
    counts in its namespace, so `sub-1` sent again as the `research:sub-1` it came back as is the same request;
    the digest of the key as given is accepted too, for records from before keys were per team."""
    key, team = runtime.get("submission_id"), runtime.get("team")
    if not key or team is None:
        return (digest({"spec": spec, "runtime": runtime}),)
    keyed = {**runtime, "submission_id": team_submission_id(team, key)}
    return digest({"spec": spec, "runtime": keyed}), digest({"spec": spec, "runtime": runtime})


def claim_id(store: Store, key: str | None, team: str | None, now: float) -> tuple[str, SubmissionRecord | None]:
    """The id a new submission keyed `key` is stored under, and the record it repeats if that id is taken by
    the same caller (idempotency). A team's id is `team:key` (a generated key when none is given)."""
    if team is None:
        submission_id = key or new_submission_id(now)
        return submission_id, (store.get_submission(key) if key else None)
    submission_id = team_submission_id(team, key or new_submission_id(now))
    if len(submission_id) > MAX_ID_LENGTH:
        raise FabricError(f"submission_id {submission_id!r} is over {MAX_ID_LENGTH} characters with the team's "
                          "prefix", code=ErrorCode.SPEC_FIELD, where="runtime_params.submission_id",
                          fix="use a shorter submission_id")
    taken = store.get_submission(submission_id)  # read once: a submit pays two lookups at most
    if key:  # as team_record(store, key, team), reusing that read
        if taken is not None and taken.team == team:
            return submission_id, taken
        legacy = store.get_submission(key) if key != submission_id else None
        if legacy is not None and legacy.team == team:
            return submission_id, legacy
    if taken is not None:
        # Another team's plain id from before ids were per team: never reused, never described.
        raise ConflictError("this submission_id cannot be used", code=ErrorCode.IDEMPOTENCY_CONFLICT,
                            where="runtime_params.submission_id", fix="use another submission_id")
    return submission_id, None
