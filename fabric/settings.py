"""Every `FABRIC_*` environment variable, read once into one typed, frozen `Settings` object.

Each field names its variable, type, default and a one-line description; `docs/settings.md` is generated
from them (`python -m fabric.settings --markdown > docs/settings.md`, checked by a unit test). A value that
does not parse raises a `FabricError` (code SETTINGS_INVALID) that names the variable and the fix. An
empty value counts as unset. Paths under `$FABRIC_HOME` are resolved against the home they are read for.

Who reads what, in which process (each is a separate process with its own environment):
- The CLI, the SDK (`fb.connect`) and the gateway replicas use `settings()`: read once per process.
- The registry actor reads `Settings.from_env(home=...)` in its own process when it starts, with the
  home its creator passed. Its environment is the Ray node's (the env of `ray start`, of `ray.init` for a
  local cluster, or the pod/VM env in `k8s/` and `cluster.yaml`), plus its actor `runtime_env`. It passes
  the values down to the engine, the store, the cache and the observers as constructor arguments.
- Ray workers get the registry's home, artifact store and persistence choice in each `NodeCall`. What
  describes the node itself (where its secrets are mounted, the MLflow server it logs to) comes from
  `settings(call.home)` in the worker, i.e. from that node's environment (plus the submission's
  `runtime_env` env vars), resolved against the registry's home.
A process that sets a variable for a child (a `runtime_env`, a subprocess env) uses the names here (`ENV`).

This module is pure (no Ray): any layer may import it.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fabric.errors import ErrorCode, FabricError

# The images the Dockerfile builds (docker/build.sh): Ray's rayproject/ray:2.60.0-py311 (-gpu) plus this project and
# its runtime extras, tagged with the project's version; tests/unit/test_image.py keeps k8s/ and cluster.yaml in step.
IMAGE_REPO = "ghcr.io/archetype/fabric"
DEFAULT_IMAGE = f"{IMAGE_REPO}:0.1.0"
GPU_IMAGE = f"{DEFAULT_IMAGE}-gpu"
_HOME = "$FABRIC_HOME"


@dataclass(frozen=True)
class Var:
    """How one field is read: its variable, its type as the docs show it, its default, its parser."""

    env: str
    doc: str
    type: str
    shown: str  # the default, as the docs show it
    parse: Callable[[str], Any]
    default: Any = None  # a value, or a callable of (home, environ) for what follows the home
    secret: bool = False  # never shown in repr or docs


def _var(env: str, doc: str, type_: str, parse: Callable[[str], Any], default: Any = None,
         shown: str = "", secret: bool = False) -> Any:
    if not shown:
        shown = "(unset)" if default is None else ("0" if default is False else str(default))
    return field(repr=not secret, metadata={"var": Var(env, doc, type_, shown, parse, default, secret)})


def _text(value: str) -> str:
    return value


def _under_home(*parts: str) -> Callable[[str, Mapping[str, str]], str]:
    return lambda home, _env: str(Path(home, *parts))


def _served(env: Mapping[str, str]) -> bool:
    """Whether the MLflow tracking URI names a server (which then also serves the artifacts)."""
    uri = env.get("FABRIC_MLFLOW_URI") or env.get("MLFLOW_TRACKING_URI") or ""
    return uri.startswith(("http://", "https://"))


def _int(least: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError("not a whole number") from None
        if number < least:
            raise ValueError(f"must be at least {least}")
        return number
    return parse


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("not a number") from None
    if not number >= 0:
        raise ValueError("must be 0 or more")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("not a number") from None
    if not number > 0:
        raise ValueError("must be more than 0")
    return number


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _bool(value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError("must be 1 or 0 (or true/false, yes/no, on/off)")


def _choice(*options: str, aliases: Mapping[str, str] | None = None) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = (aliases or {}).get(value.lower(), value.lower())
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value
    return parse


def _store(value: str) -> str:
    """`sqlite` or `memory` (any case), or a PostgreSQL URL kept as given (its user and database are case-sensitive)."""
    if value.lower() in ("sqlite", "memory"):
        return value.lower()
    if value.startswith(("postgresql://", "postgres://")):
        return value
    raise ValueError("must be sqlite, memory, or a postgresql://user@host:port/database URL")


@dataclass(frozen=True)
class Settings:
    """fabric's configuration. Build it with `Settings.from_env()`; fields are never read elsewhere."""

    home: str = _var("FABRIC_HOME", "where fabric keeps its record (store, cache, tokens, run dirs); "
                     "the registry's disk on a cluster", "path", _text,
                     lambda _home, _env: str(Path.home() / ".fabric"), shown="~/.fabric")
    address: str | None = _var("FABRIC_ADDRESS", "what the CLI connects to: a Ray address, or the gateway's "
                               "http(s):// URL (with FABRIC_TOKEN)", "str", _text,
                               shown="RAY_ADDRESS, else a local Ray")
    token: str | None = _var("FABRIC_TOKEN", "the bearer token the CLI and SDK send to the gateway",
                             "secret", _text, secret=True)
    tokens: str = _var("FABRIC_TOKENS", "the gateway's tokens file (hashed team and admin tokens)", "path",
                       _text, _under_home("tokens.yaml"), shown=f"{_HOME}/tokens.yaml")
    control_key_file: str = _var("FABRIC_CONTROL_KEY_FILE", "the control plane's secret key (made, mode 0600, by "
                                 "the first registry): drivers (gateway, CLI, SDK) read it; never give it to tasks",
                                 "path", _text, _under_home("control.key"), shown=f"{_HOME}/control.key")
    gateway_rate: float = _var("FABRIC_GATEWAY_RATE", "requests per second a team may make to /api on one "
                               "gateway replica (a token bucket per team; over it: 429 with Retry-After); 0: no "
                               "limit", "float >= 0", _non_negative_float, 50.0, shown="50")
    gateway_write_rate: float = _var("FABRIC_GATEWAY_WRITE_RATE", "of those, POSTs to /api/orch (submit, cancel, "
                                     "runs, register) per second per team; 0: no limit", "float >= 0",
                                     _non_negative_float, 10.0, shown="10")
    gateway_team_writes: int = _var("FABRIC_GATEWAY_TEAM_WRITES", "of those POSTs, how many one team may have in "
                                    "flight at once on one gateway replica (over it: 429, Retry-After 1), so that "
                                    "its queued submits never hold the replica or the registry for others; 0: no "
                                    "limit", "int >= 0", _int(0), 2)
    gateway_burst_s: float = _var("FABRIC_GATEWAY_BURST_S", "a team's bucket holds this many seconds of its rates "
                                  "(at least one request): the burst it may send at once", "float > 0",
                                  _positive_float, 3.0, shown="3")
    store: str = _var("FABRIC_STORE", "the registry's record: `sqlite` ($FABRIC_HOME/fabric.db, durable, one "
                      "head), a `postgresql://user@host:port/db` URL (durable, shared; the `postgres` extra) or "
                      "`memory` (lost on restart)", "sqlite | memory | postgresql://...", _store, "sqlite")
    artifacts: str = _var("FABRIC_ARTIFACTS", "where persisted node outputs and files go: a directory or any "
                          "pyarrow.fs URI (s3://, gs://); an S3-compatible server's endpoint comes from the standard "
                          "AWS_ENDPOINT_URL (or `?endpoint_override=` in the URI)", "path or URI", _text,
                          _under_home("artifacts"),
                          shown=f"{_HOME}/artifacts")
    persist_outputs: str = _var("FABRIC_PERSIST_OUTPUTS", "`needed`: outputs a downstream node reads are "
                                "written on success, so a resumed run reloads them; `none`: recompute them",
                                "needed | none", _choice("needed", "none"), "needed")
    scheduling: str = _var("FABRIC_SCHEDULING", "the scheduling config (pools, quotas, priorities), read over "
                           "the default one when it exists", "path", _text, _under_home("scheduling.yaml"),
                           shown=f"{_HOME}/scheduling.yaml")
    admission: bool = _var("FABRIC_ADMISSION", "admission (priorities, pools, quotas, packing) with the default "
                           "scheduling config and the scheduling file read over it; off (0): no admission, not even "
                           "with a scheduling file, ready nodes go to Ray at once", "bool", _bool, True)
    fuse: bool = _var("FABRIC_FUSE", "run chains of small nodes with the same resources as one Ray task each "
                      "(members keep their own state, attempts and logs; see docs/spec.md, fused chains); "
                      "0: one Ray task per node", "bool", _bool, True)
    skip_feasibility: bool = _var("FABRIC_SKIP_FEASIBILITY", "accept nodes no current Ray node can hold "
                                  "(an autoscaler will add one) instead of refusing them", "bool", _bool, False)
    use_images: bool = _var("FABRIC_USE_IMAGES", "run a node's `image` as Ray's image_uri container (needs "
                            "podman on every node); otherwise it is only recorded", "bool", _bool, False)
    image: str = _var("FABRIC_IMAGE", "the image `fabric k8s submit` runs a RayJob with", "str", _text,
                      DEFAULT_IMAGE)
    keep_finished: int = _var("FABRIC_KEEP_FINISHED", "finished submissions whose status the registry keeps "
                              "in memory (older ones are read from the store)", "int >= 0", _int(0), 1000)
    keep_results: int = _var("FABRIC_KEEP_RESULTS", "finished submissions whose outputs stay fetchable from "
                             "Ray's object store (at most FABRIC_KEEP_FINISHED)", "int >= 0", _int(0), 100)
    sweep_interval_s: float = _var("FABRIC_SWEEP_INTERVAL_S", "seconds between retention sweeps (removing "
                                   "submissions past their ttl_days)", "float > 0", _positive_float, 3600.0,
                                   shown="3600")
    secrets_dir: str = _var("FABRIC_SECRETS_DIR", "secrets as <dir>/<scope>/<key>: read by the registry on the "
                            "head and sent to each attempt through Ray; a worker reads its own only for a scope "
                            "the head lacks", "path", _text, _under_home("secrets"),
                            shown=f"{_HOME}/secrets")
    webhook_allow_private: bool = _var("FABRIC_WEBHOOK_ALLOW_PRIVATE", "let notify webhooks reach loopback, "
                                       "link-local and private addresses (the head's own network; refused by "
                                       "default against SSRF, docs/notify.md)", "bool", _bool, False)
    mlflow_uri: str = _var("FABRIC_MLFLOW_URI", "the MLflow tracking URI ML nodes log to, read on the node: "
                           "on a cluster the head's `mlflow server` (http://HEAD:5000, set by `fabric up`, "
                           "cluster.yaml and k8s/)",
                           "URI", _text, lambda home, env: env.get("MLFLOW_TRACKING_URI")
                           or f"sqlite:///{Path(home).resolve() / 'mlflow.db'}",
                           shown=f"MLFLOW_TRACKING_URI, else sqlite:///{_HOME}/mlflow.db")
    mlflow_artifacts: str = _var("FABRIC_MLFLOW_ARTIFACTS", "where new MLflow experiments keep artifacts; "
                                 "with a tracking server (an http(s) tracking URI) its `mlflow-artifacts:/` root, "
                                 "so nodes upload through the server into its artifact store", "path or URI", _text,
                                 lambda home, env: "mlflow-artifacts:/" if _served(env)
                                 else str(Path(home).resolve() / "mlartifacts"),
                                 shown=f"mlflow-artifacts:/ with an http(s) tracking URI, else {_HOME}/mlartifacts")
    lineage: str | None = _var("FABRIC_LINEAGE", "where the registry sends OpenLineage events; overrides "
                               "OPENLINEAGE_URL (set: http) and OPENLINEAGE_DISABLED=true (off)", "file | http | off",
                               _choice("file", "http", "off", aliases={"none": "off", "0": "off"}),
                               shown="http where OPENLINEAGE_URL is set, off where OPENLINEAGE_DISABLED=true, "
                                     "else file")
    lineage_file: str = _var("FABRIC_LINEAGE_FILE", "the lineage file (one RunEvent per line) with "
                             "FABRIC_LINEAGE=file", "path", _text, _under_home("lineage", "events.jsonl"),
                             shown=f"{_HOME}/lineage/events.jsonl")
    lineage_file_max_bytes: int = _var("FABRIC_LINEAGE_FILE_MAX_BYTES", "the lineage file is rotated (to .1, .2, "
                                       "…) before it would grow past this many bytes", "int >= 1", _int(1), 64 << 20)
    lineage_file_backups: int = _var("FABRIC_LINEAGE_FILE_BACKUPS", "rotated lineage files kept beside the "
                                     "current one (the oldest is deleted)", "int >= 0", _int(0), 5)
    lineage_url: str | None = _var("FABRIC_LINEAGE_URL", "lineage over HTTP: the endpoint, e.g. "
                                   "http://marquez:5000 (events go to /api/v1/lineage); overrides OPENLINEAGE_URL",
                                   "URL", _text, shown="OPENLINEAGE_URL")
    lineage_api_key: str | None = _var("FABRIC_LINEAGE_API_KEY", "lineage over HTTP: sent as a bearer "
                                       "token; overrides OPENLINEAGE_API_KEY", "secret", _text, secret=True,
                                       shown="OPENLINEAGE_API_KEY")
    lineage_namespace: str | None = _var("FABRIC_LINEAGE_NAMESPACE", "the OpenLineage namespace of jobs and "
                                         "datasets; overrides OPENLINEAGE_NAMESPACE", "str", _text,
                                         shown="OPENLINEAGE_NAMESPACE, else fabric")
    otlp_endpoint: str | None = _var("FABRIC_OTLP_ENDPOINT", "turns traces on: spans go over OTLP/HTTP to "
                                     "<endpoint>/v1/traces, e.g. http://collector:4318; overrides the OTEL_* "
                                     "variables (docs/observability.md)", "URL", _text,
                                     shown="OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT")
    log_format: str = _var("FABRIC_LOG_FORMAT", "fabric's Python logging (registry, gateway, CLI): `text` as "
                           "Python and Ray set it up, or `json`, one object per line (fabric/logs.py)",
                           "text | json", _choice("text", "json"), "text")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, home: str | None = None) -> Settings:
        """Read every variable from `environ` (default `os.environ`); `home` overrides FABRIC_HOME, and the
        paths under the home follow it."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in variables().items():
            raw = env.get(var.env, "")
            if name == "home" and home:
                raw = str(home)
            if raw == "":
                default = var.default
                values[name] = default(values.get("home", ""), env) if callable(default) else default
                continue
            try:
                values[name] = var.parse(raw)
            except ValueError as exc:
                shown = "***" if var.secret else repr(raw)
                raise FabricError(f"{var.env}={shown} is not valid: {exc}", code=ErrorCode.SETTINGS_INVALID,
                                  where=var.env, fix=f"set {var.env} to a value of type {var.type}, or unset it "
                                                     f"for the default ({var.shown}); see docs/settings.md") from None
        if values["lineage"] == "http" and not (values["lineage_url"] or env.get("OPENLINEAGE_URL")):
            raise FabricError("FABRIC_LINEAGE=http needs a URL", code=ErrorCode.SETTINGS_INVALID,
                              where="FABRIC_LINEAGE_URL", fix="set OPENLINEAGE_URL or FABRIC_LINEAGE_URL (e.g. "
                                                              "http://marquez:5000), or FABRIC_LINEAGE=file or off")
        return cls(**values)


def variables() -> dict[str, Var]:
    """Every settings field and how it is read, in declaration order."""
    return {f.name: f.metadata["var"] for f in fields(Settings)}


ENV = {name: var.env for name, var in variables().items()}  # field name -> variable name


@functools.lru_cache(maxsize=16)
def settings(home: str | None = None) -> Settings:
    """This process's settings, read once (per `home` override); `settings.cache_clear()` re-reads them."""
    return Settings.from_env(home=home)


def markdown() -> str:
    """The table of docs/settings.md."""
    rows = ["| Variable | Type | Default | What it does |", "|---|---|---|---|"]
    for var in variables().values():
        cells = [f"`{var.env}`", var.type, var.shown, var.doc]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


DOC_HEADER = """# Settings

Every `FABRIC_*` environment variable fabric reads. This file is generated from `fabric/settings.py`
(`python -m fabric.settings --markdown > docs/settings.md`); a unit test fails when it is out of date.
An empty value counts as unset; a value that does not parse stops the process with an error that names
the variable and the fix. The module docstring of `fabric/settings.py` says which process reads what:
the registry reads its own environment (the Ray node's), the CLI and SDK theirs, and secrets and MLflow
are read on the node that runs the task.

"""

def main(argv: list[str]) -> int:
    if argv[1:] == ["--markdown"]:
        sys.stdout.write(DOC_HEADER + markdown())
        return 0
    sys.stderr.write("usage: python -m fabric.settings --markdown\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
