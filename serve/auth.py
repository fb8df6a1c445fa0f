"""Bearer tokens mapped to a team and a role, kept hashed in a YAML file beside the teams' config: who is
calling, never what the body claims."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

import yaml

from fabric.errors import ErrorCode, FabricError
from fabric.schedule.grants import TeamGrants, grants_for, parse_grants
from fabric.spec.policy import Principal
from fabric.spec.teams import Role, TeamsConfig, parse_teams

__all__ = ["Principal", "Role", "TokenTable", "hash_token", "mint_token"]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_role(entry: dict[str, Any], where: str) -> Role:
    """A token's role. Files written before roles: `admin: true` is an admin, any other token a developer
    (the power every team token had then)."""
    role = entry.get("role")
    if role is None:
        return Role.ADMIN if entry.get("admin") else Role.DEVELOPER
    try:
        parsed = Role(str(role))
    except ValueError:
        raise FabricError(f"unknown role {role!r}", code=ErrorCode.SETTINGS_INVALID, where=f"{where}.role",
                          fix=f"use one of: {', '.join(r.value for r in Role)}") from None
    if entry.get("admin") and parsed is not Role.ADMIN:
        raise FabricError(f"admin: true contradicts role {parsed}", code=ErrorCode.SETTINGS_INVALID,
                          where=f"{where}.admin", fix="keep role and drop admin (role: admin for an admin token)")
    return parsed


class TokenTable:
    """`tokens: [{team: research, sha256: <hex>, role: runner}, ...]`, `teams: {research: {...}}` (roles' code
    policy and serving, fabric/spec/teams.py) and `grants: {research: {...}}` (fabric/schedule/grants.py);
    only hashes are ever stored."""

    def __init__(self, entries: list[dict], grants: dict[str, TeamGrants] | None = None,
                 teams: TeamsConfig | None = None) -> None:
        self._by_hash = {e["sha256"]: Principal(str(e["team"]), token_role(e, f"tokens[{i}]"))
                         for i, e in enumerate(entries)}
        self._grants = grants or {}
        self.teams = teams or TeamsConfig()

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        file = Path(path)
        data = yaml.safe_load(file.read_text()) if file.exists() else None
        data = data or {}
        # `grants:` (fabric/schedule/grants.py): per team, its secrets scopes, max priority and shared cache.
        # `teams:` (fabric/spec/teams.py): per team, what its runners may run and name, and its serving.
        return cls(list(data.get("tokens", [])), parse_grants(data.get("grants")), parse_teams(data.get("teams")))

    def grants(self, team: str) -> TeamGrants:
        """What `team` may claim on a submission: its entry under `grants:`, else the `"*"` entry, else the
        least (no secrets scope, priority up to normal, no shared cache)."""
        return grants_for(self._grants, team)

    def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise FabricError("missing bearer token", code=ErrorCode.UNAUTHORIZED, where="Authorization",
                              fix="send `Authorization: Bearer <token>`; `fabric token --team T` makes one")
        digest = hash_token(token.strip())
        for known, principal in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise FabricError("unknown token", code=ErrorCode.UNAUTHORIZED, where="Authorization",
                          fix="use a token listed (hashed) in the gateway's tokens file")


def mint_token(path: str | Path, team: str, admin: bool = False, role: Role | str | None = None) -> str:
    """Append a new token for `team` to the tokens file (hash only) and return the token, shown once.
    `role` defaults to developer (admin with `admin=True`)."""
    resolved = Role(role) if role is not None else (Role.ADMIN if admin else Role.DEVELOPER)
    if admin and resolved is not Role.ADMIN:
        raise FabricError(f"--admin contradicts role {resolved}", code=ErrorCode.SPEC_FIELD, where="role",
                          fix="give either --admin or --role")
    token = secrets.token_urlsafe(32)
    file = Path(path)
    data = (yaml.safe_load(file.read_text()) if file.exists() else None) or {}
    data.setdefault("tokens", []).append({"team": team, "sha256": hash_token(token), "role": resolved.value})
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    file.chmod(0o600)
    return token
