"""Secrets by reference: a submission names scopes, a node reads values on its own Ray node at run time.

A value never travels through fabric: not in the spec, the runtime params, Ray's runtime_env (which Ray
shows in job info and in other workers' environments), task arguments, the store or the logs. The
operator mounts each scope as a directory of files on the Ray nodes (a Kubernetes Secret volume, say)
under `$FABRIC_SECRETS_DIR` (default `$FABRIC_HOME/secrets`): `<dir>/<scope>/<key>`. A node may read a
scope only if its submission listed it in `runtime_params.secrets_scope`.

This scopes *fabric's* API, not Ray: code running on the cluster can read any file the Ray worker can.
Teams that do not trust each other's code get a Ray cluster each (k8s/trust-domains/, docs/reliability.md).
"""

from __future__ import annotations

import re
from pathlib import Path

from fabric.errors import ErrorCode, FabricError
from fabric.settings import ENV, settings

SECRETS_DIR_ENV = ENV["secrets_dir"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")  # as runtime_params.secrets_scope allows


def secrets_root(home: str | Path) -> Path:
    """Read on the node that runs the task: its FABRIC_SECRETS_DIR, else `<home>/secrets` (fabric/settings.py)."""
    return Path(settings(str(home)).secrets_dir)


def read_secret(root: Path, scope: str, key: str, allowed: tuple[str, ...]) -> str:
    """The value of `key` in `scope`, read from the node's mounted files; FORBIDDEN for an unlisted scope."""
    if scope not in allowed:
        raise FabricError(f"secrets scope {scope!r} is not listed for this submission",
                          code=ErrorCode.FORBIDDEN, where="runtime_params.secrets_scope",
                          fix=f"add {scope!r} to runtime_params.secrets_scope when submitting")
    if not _SCOPE.match(scope) or ".." in scope.split("/") or not _NAME.match(key) or key.startswith(".."):
        raise FabricError(f"secret name {scope!r}/{key!r} is not a plain name", code=ErrorCode.SPEC_FIELD,
                          where="secret", fix="use names of letters, digits, '_', '.', '-' (no '..')")
    path = root / scope / key
    try:
        # A Kubernetes Secret volume ends values without a newline; files written by hand often have one.
        return path.read_text().rstrip("\n")
    except OSError as exc:
        raise FabricError(f"secret {key!r} of scope {scope!r} is not mounted on this node ({exc.strerror})",
                          code=ErrorCode.NOT_FOUND, where=f"{scope}/{key}",
                          fix=f"mount the scope's files under {root}/{scope}/ on every Ray node "
                              f"(or set {SECRETS_DIR_ENV})") from None
