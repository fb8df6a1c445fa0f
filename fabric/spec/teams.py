"""Roles and the per-team config of the tokens file (`teams:`): what each team's tokens may run, name and serve."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fabric.errors import ErrorCode, FabricError, Problem


class Role(StrEnum):
    """What a token may do. `runner`: registered code only; `developer`: its own code too; `admin`: everything,
    every team's work. A token written before roles existed is a `developer` (an `admin: true` one, `admin`)."""

    ADMIN = "admin"
    DEVELOPER = "developer"
    RUNNER = "runner"


# Module prefixes every team's runners may call (the repo's registered jobs), before the team's own packages.
DEFAULT_CODE_PREFIXES: tuple[str, ...] = ("jobs",)
_PACKAGE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SERVED_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
EVERY_TEAM = "*"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServeConfig(_Model):
    """A team's served models: its capacity, and which of its names other teams may call."""

    max_cpus: float | None = Field(None, ge=0, description="Most CPUs (replicas × replica_cpus) over the team's "
                                                          "served names; unset: no limit.")
    max_replicas: int | None = Field(None, ge=0, description="Most replicas over the team's served names.")
    publish: dict[str, list[str]] = Field(default_factory=dict,
                                          description="Served name -> teams that may predict it ('*': every team).")

    @field_validator("publish")
    @classmethod
    def _names(cls, publish: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in publish:
            if not _SERVED_NAME.match(name):
                raise ValueError(f"{name!r} is not a served name (a letter, then letters, digits, '_' or '-')")
        return publish


class TeamConfig(_Model):
    """One team's entry under `teams:` in the tokens file. Unlisted teams get the defaults."""

    # -- roles and code (issue 15, item 1) -------------------------------------------------------
    packages: list[str] = Field(default_factory=list, description="Module prefixes (packages) a runner's "
                                "python_task may call, besides `jobs`.")
    pools: list[str] = Field(default_factory=list, description="The pools a runner may name (node pool, "
                             "affinity.compute_pool, `pool:<name>` resources); empty: none, default placement.")
    resources: list[str] = Field(default_factory=list, description="Custom resources a runner may request "
                                 "besides its pools' (e.g. accelerator_type:A100); never `node:*`.")
    images: list[str] = Field(default_factory=list, description="Container images a runner's nodes may name.")
    # -- serving (issue 15, item 3) --------------------------------------------------------------
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("packages")
    @classmethod
    def _packages(cls, packages: list[str]) -> list[str]:
        normalized = [code_prefix(p) for p in packages]
        for raw, package in zip(packages, normalized, strict=True):
            if not _PACKAGE.match(package):
                raise ValueError(f"{raw!r} is not a package name (like 'research_lib' or 'research_lib.jobs')")
        return normalized

    def code_prefixes(self) -> tuple[str, ...]:
        return (*DEFAULT_CODE_PREFIXES, *self.packages)


def code_prefix(package: str) -> str:
    """`jobs`, `jobs.` and `jobs.*` all name the package `jobs`."""
    return package.removesuffix("*").removesuffix(".")


class TeamsConfig(_Model):
    """The `teams:` section: team name -> its config."""

    teams: dict[str, TeamConfig] = Field(default_factory=dict)

    def team(self, name: str) -> TeamConfig:
        return self.teams.get(name) or TeamConfig()

    def may_predict(self, owner: str, name: str, team: str) -> bool:
        """May `team` call `owner`'s served `name`? Its owner may; others only where the owner published it."""
        if team == owner:
            return True
        audience = self.team(owner).serve.publish.get(name, [])
        return EVERY_TEAM in audience or team in audience


def parse_teams(raw: Any, where: str = "teams") -> TeamsConfig:
    """The `teams:` mapping of a tokens file, validated; SETTINGS_INVALID names every bad field."""
    if raw is None:
        return TeamsConfig()
    if not isinstance(raw, Mapping):
        raise FabricError(f"{where} must be a mapping of team name -> config", code=ErrorCode.SETTINGS_INVALID,
                          where=where, fix="write `teams: {research: {packages: [research_lib]}}`")
    try:
        return TeamsConfig.model_validate({"teams": dict(raw)})
    except ValidationError as exc:
        problems = tuple(Problem(ErrorCode.SETTINGS_INVALID,
                                 ".".join([where, *(str(p) for p in e["loc"][1:])]), e["msg"],
                                 "see docs/security.md for the teams config") for e in exc.errors())
        raise FabricError(f"the teams config is invalid: {len(problems)} problem(s)",
                          code=ErrorCode.SETTINGS_INVALID, where=where, problems=problems,
                          fix="; ".join(str(p) for p in problems[:3])) from None
