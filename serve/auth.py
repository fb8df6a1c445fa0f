"""Bearer tokens mapped to teams, kept hashed in a YAML file: who is calling, never what the body claims."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from fabric.errors import ErrorCode, FabricError
from fabric.schedule.grants import TeamGrants, grants_for, parse_grants


@dataclass(frozen=True)
class Principal:
    team: str
    admin: bool = False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenTable:
    """`tokens: [{team: research, sha256: <hex>, admin: false}, ...]`; only hashes are ever stored."""

    def __init__(self, entries: list[dict], grants: dict[str, TeamGrants] | None = None) -> None:
        self._by_hash = {e["sha256"]: Principal(str(e["team"]), bool(e.get("admin", False))) for e in entries}
        self._grants = grants or {}

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        file = Path(path)
        data = yaml.safe_load(file.read_text()) if file.exists() else None
        # `grants:` (fabric/schedule/grants.py): per team, its secrets scopes, max priority and shared cache.
        return cls(list((data or {}).get("tokens", [])), parse_grants((data or {}).get("grants")))

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


def mint_token(path: str | Path, team: str, admin: bool = False) -> str:
    """Append a new token for `team` to the tokens file (hash only) and return the token, shown once."""
    token = secrets.token_urlsafe(32)
    file = Path(path)
    data = (yaml.safe_load(file.read_text()) if file.exists() else None) or {}
    data.setdefault("tokens", []).append({"team": team, "sha256": hash_token(token), "admin": admin})
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    file.chmod(0o600)
    return token
