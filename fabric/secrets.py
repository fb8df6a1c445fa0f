"""Secrets by reference: a submission names scopes; the head hands a node attempt the values, through Ray.

A value never sits in the spec, the runtime params, Ray's runtime_env (which Ray shows in job info and in
other workers' environments), the store, the logs or a worker's disk. The operator keeps each scope as a
directory of files on the head, under the registry's `$FABRIC_SECRETS_DIR` (default `$FABRIC_HOME/secrets`):
`<dir>/<scope>/<key>`. At each dispatch the registry reads the scopes the submission listed in
`runtime_params.secrets_scope` (`head_secrets`) and sends them with that attempt only, as a small Ray task
argument beside the node's call, kept in the worker's memory for the attempt (`NodeContext.secret`).

A scope the head does not hold is read from the worker's own `$FABRIC_SECRETS_DIR` instead: a Kubernetes
Secret mounted on the worker pods (docs/security.md says which path is used where). Either way a node reads
only scopes its submission listed, and the gateway lets a team list only the scopes granted to it
(fabric/schedule/grants.py).

This scopes *fabric's* API, not Ray: code running on the cluster can read any file the Ray worker can.
Teams that do not trust each other's code get a Ray cluster each (k8s/trust-domains/, docs/reliability.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from fabric.errors import ErrorCode, FabricError
from fabric.settings import ENV, settings

SECRETS_DIR_ENV = ENV["secrets_dir"]
MAX_SECRET_BYTES = 64 << 10  # all of one attempt's values: they ride inline in Ray's task spec, never in plasma
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")  # as runtime_params.secrets_scope allows

Delivered = Mapping[str, Mapping[str, str]]  # scope -> key -> value, as the head sent them for one attempt


def secrets_root(home: str | Path) -> Path:
    """Its FABRIC_SECRETS_DIR, else `<home>/secrets` (fabric/settings.py), as this process's environment says."""
    return Path(settings(str(home)).secrets_dir)


def _plain_scope(scope: str) -> bool:
    return bool(_SCOPE.match(scope)) and ".." not in scope.split("/")


def head_secrets(root: str | Path | None, scopes: Iterable[str]) -> dict[str, dict[str, str]]:
    """Read on the head at dispatch: every key of each listed scope the head holds (a scope it does not hold
    is left to the worker's own mount). Keys are the plain files of `<root>/<scope>/` (a Kubernetes Secret
    volume's `..data` links are skipped, its key links followed)."""
    found: dict[str, dict[str, str]] = {}
    if root is None:
        return found
    total = 0
    for scope in scopes:
        folder = Path(root) / scope
        if not _plain_scope(scope) or not folder.is_dir():
            continue
        values = {}
        for path in sorted(folder.iterdir()):
            if not _NAME.match(path.name) or path.name.startswith(".") or not path.is_file():
                continue
            # A Kubernetes Secret volume ends values without a newline; files written by hand often have one.
            values[path.name] = path.read_text().rstrip("\n")
            total += len(values[path.name]) + len(path.name)
        if total > MAX_SECRET_BYTES:
            raise FabricError(f"the secrets scopes of this submission hold over {MAX_SECRET_BYTES} bytes",
                              code=ErrorCode.TOO_LARGE, where="runtime_params.secrets_scope",
                              fix="keep secrets small (tokens, keys); put large material in the artifact store")
        found[scope] = values
    return found


def read_secret(root: Path | None, scope: str, key: str, allowed: tuple[str, ...],
                delivered: Delivered | None = None) -> str:
    """The value of `key` in `scope`: from what the head delivered for this attempt, else from the files
    mounted on this node under `root`; FORBIDDEN for a scope the submission did not list."""
    if scope not in allowed:
        raise FabricError(f"secrets scope {scope!r} is not listed for this submission",
                          code=ErrorCode.FORBIDDEN, where="runtime_params.secrets_scope",
                          fix=f"add {scope!r} to runtime_params.secrets_scope when submitting")
    if not _plain_scope(scope) or not _NAME.match(key) or key.startswith(".."):
        raise FabricError(f"secret name {scope!r}/{key!r} is not a plain name", code=ErrorCode.SPEC_FIELD,
                          where="secret", fix="use names of letters, digits, '_', '.', '-' (no '..')")
    if delivered is not None and scope in delivered:
        value = delivered[scope].get(key)
        if value is None:
            raise FabricError(f"secret {key!r} is not in scope {scope!r} on the head", code=ErrorCode.NOT_FOUND,
                              where=f"{scope}/{key}", fix=f"add the file {scope}/{key} under the head's "
                                                          f"{SECRETS_DIR_ENV}")
        return value
    if root is None:
        raise FabricError(f"secrets scope {scope!r} was not delivered to this node", code=ErrorCode.NOT_FOUND,
                          where=f"{scope}/{key}", fix="run the node through fabric with the scope in "
                                                      "runtime_params.secrets_scope and its files on the head")
    path = root / scope / key
    try:
        return path.read_text().rstrip("\n")
    except OSError as exc:
        raise FabricError(f"secret {key!r} of scope {scope!r} is neither on the head nor mounted on this node "
                          f"({exc.strerror})", code=ErrorCode.NOT_FOUND, where=f"{scope}/{key}",
                          fix=f"put the scope's files under the head's {SECRETS_DIR_ENV} (<dir>/{scope}/{key}), "
                              f"or mount them on every Ray node under {root}/{scope}/") from None
