"""What each team may claim on a submission, pure: its secrets scopes, its highest priority, the shared cache.

The operator writes the grants in the tokens file's `grants:` section (serve/auth.py reads it); the gateway
passes the caller's team's grants to the registry, which checks a submission against them before anything is
stored (`check_submission`). A team with no entry gets the `"*"` entry, else `TeamGrants()`: no secrets
scope, priority up to `normal`, no shared cache. What a team does not claim it cannot get by naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from fabric.errors import ErrorCode, FabricError, Problem
from fabric.spec import DagSpec, Priority, RuntimeParams

DEFAULT_ENTRY = "*"  # the grants of every team without its own entry
_KEYS = {"secrets_scopes", "max_priority", "shared_cache"}


@dataclass(frozen=True)
class TeamGrants:
    """One team's grants. `secrets_scopes` are exact names or shell patterns (`lake-*`)."""

    secrets_scopes: tuple[str, ...] = ()
    max_priority: Priority = Priority.NORMAL
    shared_cache: bool = False  # may its `cache: shared` nodes use (and feed) the cache shared between teams

    def allows_scope(self, scope: str) -> bool:
        return any(fnmatchcase(scope, pattern) for pattern in self.secrets_scopes)


def parse_grants(section: Any, where: str = "grants") -> dict[str, TeamGrants]:
    """The `grants:` section of the tokens file, `{team: {secrets_scopes, max_priority, shared_cache}}`;
    a typo is an error naming it, never a silently wider or narrower grant."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise _config(where, "must be a mapping of team name to its grants")
    grants = {}
    for team, entry in section.items():
        at = f"{where}.{team}"
        if not isinstance(entry, Mapping):
            raise _config(at, "must be a mapping with secrets_scopes, max_priority, shared_cache")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise _config(f"{at}.{unknown[0]}", f"is not a grant (known: {', '.join(sorted(_KEYS))})")
        scopes = entry.get("secrets_scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
            raise _config(f"{at}.secrets_scopes", "must be a list of scope names or patterns")
        try:
            priority = Priority(entry.get("max_priority", Priority.NORMAL))
        except ValueError:
            raise _config(f"{at}.max_priority", f"must be one of {', '.join(p.value for p in Priority)}") from None
        shared = entry.get("shared_cache", False)
        if not isinstance(shared, bool):
            raise _config(f"{at}.shared_cache", "must be true or false")
        grants[str(team)] = TeamGrants(tuple(scopes), priority, shared)
    return grants


def grants_for(grants: Mapping[str, TeamGrants], team: str) -> TeamGrants:
    return grants.get(team) or grants.get(DEFAULT_ENTRY) or TeamGrants()


def check_submission(grants: TeamGrants, team: str, dag: DagSpec, runtime: RuntimeParams) -> None:
    """Raise FORBIDDEN listing every claim of the submission beyond the team's grants (nothing is stored)."""
    problems: list[Problem] = []
    fix_config = f"ask an admin to grant it to team {team!r} in the tokens file's `grants:` section"
    for scope in runtime.secrets_scope:
        if not grants.allows_scope(scope):
            problems.append(Problem(
                ErrorCode.FORBIDDEN, "runtime_params.secrets_scope",
                f"team {team!r} is not granted secrets scope {scope!r} (granted: "
                f"{', '.join(grants.secrets_scopes) or 'none'})", f"remove {scope!r}, or {fix_config}"))
    for where, section in (("notify", dag.notify), ("runtime_params.notify", runtime.notify)):
        for i, hook in enumerate(section.webhooks if section else ()):  # the head signs with it: a claim too
            if not grants.allows_scope(hook.scope):
                problems.append(Problem(
                    ErrorCode.FORBIDDEN, f"{where}.webhooks[{i}].secret",
                    f"team {team!r} is not granted secrets scope {hook.scope!r}, which signs this webhook",
                    f"sign with a granted scope, or {fix_config}"))
    limit = grants.max_priority
    claims: list[tuple[str, Priority | None]] = [("runtime_params.priority", runtime.priority)]
    if runtime.priority is None:  # a submission's priority overrides every one in the spec
        claims.append(("slo.priority", dag.slo.priority if dag.slo else None))
        claims += [(f"nodes[{i}].slo.priority", node.slo.priority if node.slo else None)
                   for i, node in enumerate(dag.nodes)]
    for where, priority in claims:
        if priority is not None and Priority(priority).rank > limit.rank:
            problems.append(Problem(
                ErrorCode.FORBIDDEN, where,
                f"team {team!r} may not claim priority {Priority(priority).value!r}: its max_priority is "
                f"{limit.value!r}", f"use {limit.value!r} or lower, or {fix_config}"))
    if not grants.shared_cache:
        for i, node in enumerate(dag.nodes):
            if node.cache == "shared":
                problems.append(Problem(
                    ErrorCode.FORBIDDEN, f"nodes[{i}].cache",
                    f"team {team!r} may not use the cache shared between teams (shared_cache is not granted)",
                    f"use `cache: true` (this team's own cache), or {fix_config}"))
    if problems:
        first = problems[0]
        raise FabricError(first.message if len(problems) == 1 else f"{len(problems)} claims beyond team "
                          f"{team!r}'s grants; first: {first.message}", code=ErrorCode.FORBIDDEN, where=first.where,
                          fix=first.fix, problems=tuple(problems))


def _config(where: str, rule: str) -> FabricError:
    return FabricError(f"tokens file: {where} {rule}", code=ErrorCode.SPEC_FIELD, where=where,
                       fix="fix the `grants:` section of the tokens file (docs/gateway.md#grants)")
