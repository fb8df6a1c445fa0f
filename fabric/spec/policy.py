"""The code policy: what a token's role may submit, as a pure function returning every violation at once.

`violations()` reads the parsed spec, the runtime params, who is asking (team and role), the team's config and
the served names' owners; it never imports Ray. The gateway (and the Ray client, when it is given a role) calls
it before anything is stored, and refuses with `POLICY_DENIED` listing every violation (docs/security.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fabric.errors import ErrorCode, FabricError, Problem
from fabric.spec.models import DagSpec, NodeSpec, Resources, RuntimeParams
from fabric.spec.params import references, resolve_params, substitute
from fabric.spec.teams import Role, TeamConfig

HEAD_RESOURCE = "node:__internal_head__"
NODE_RESOURCE_PREFIX = "node:"
POOL_RESOURCE_PREFIX = "pool:"  # as fabric.plan.compile names a pool's resource
BUILTIN_KINDS = frozenset({"sql", "train", "ray_job", "tune", "serve", "promote"})  # registered code, not shipped
MODEL_KINDS = frozenset({"serve", "promote", "llm_serve"})  # each claims its params.name
# Runtime-env keys that bring code to the workers (the spec's RuntimeEnvSpec allows the first two; a Ray
# client's own job runtime_env may carry any of them).
CODE_ENV_KEYS = ("working_dir", "py_modules", "pip", "conda", "uv", "container", "image_uri", "java_jars",
                 "py_executable")
# Environment variables that make an interpreter or the loader run other code.
_CODE_ENV_VARS = re.compile(r"^(PYTHON.*|LD_.*|DYLD_.*|BASH_ENV|ENV|PERL5LIB|PERL5OPT|NODE_OPTIONS|RUBYOPT|"
                            r"FABRIC_.*)$", re.IGNORECASE)
# Polars SQL's table functions read files on the worker.
_SQL_FILE_FUNCTIONS = re.compile(r"\b(read|scan)_(csv|parquet|ipc|json|ndjson|delta|excel|database)\s*\(",
                                 re.IGNORECASE)


@dataclass(frozen=True)
class Principal:
    """Who is asking: the token's team and role (never what the body claims)."""

    team: str
    role: Role = Role.DEVELOPER

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class ServedName:
    """A served model name's owner, and the capacity its last accepted deployment asked for."""

    owner: str
    cpus: float = 0.0
    replicas: int = 0


def violations(dag: DagSpec, runtime: RuntimeParams, who: Principal, config: TeamConfig, *,
               inline_code: Iterable[str] = (), job_runtime_env: Mapping[str, Any] | None = None,
               served: Mapping[str, ServedName] | None = None) -> list[Problem]:
    """Every rule this submission breaks for `who`; empty when it may be stored and run.

    `inline_code`: entrypoints whose functions travel pickled (a notebook DAG); `job_runtime_env`: the
    submitting driver's own runtime_env (the Ray client's), which the nodes would inherit; `served`: the
    served names known now (name -> owner and capacity)."""
    found: list[Problem] = []
    deny = _Denier(who, found)
    default = dag.resources.default if dag.resources is not None else None
    pooled = bool(runtime.affinity and runtime.affinity.compute_pool)
    nodes = resolved_nodes(dag, runtime)
    for index, node in enumerate(nodes):
        where = f"nodes[{index}]"
        _placement(deny, node.resources, f"{where}.resources", config)
        if not who.admin and _weightless(node, default) and not (node.pool or pooled):
            deny(f"{where}.resources.cpu", "placement.head", "a node that asks for no CPU, GPU or custom resource "
                 "may be placed on the head (which advertises no CPUs)", "ask for some CPU, e.g. cpu: 100m")
        if who.role is Role.RUNNER:
            _runner_node(deny, node, where, config)
    if dag.resources is not None:
        _placement(deny, dag.resources.default, "resources.default", config)
    if who.role is Role.RUNNER:
        _runner_submission(deny, runtime, config, inline_code, job_runtime_env or {})
    if not who.admin:
        _serving(deny, nodes, who, config, served or {})
    return found


def resolved_nodes(dag: DagSpec, runtime: RuntimeParams) -> list[NodeSpec]:
    """The nodes as they will run: `{{ params.NAME }}` in node params replaced (a query or a served name may come
    from a pipeline parameter). Params that do not resolve leave the templates: the registry refuses those."""
    params, problems = resolve_params(dag.params, runtime.params)
    if problems or not params:
        return list(dag.nodes)
    return [node.model_copy(update={"params": substitute(node.params, params)}) if references(node.params) else node
            for node in dag.nodes]


Claim = tuple[str, ServedName, bool]  # a served name, its record after this submission, whether it is new


def planned_claims(nodes: list[NodeSpec], who: Principal, served: Mapping[str, ServedName]) -> list[Claim]:
    """The served names an accepted submission claims (new ones) or updates (its team's, with their new capacity).
    An admin redeploying another team's name leaves it that team's."""
    claims: dict[str, Claim] = {}
    for node in nodes:
        name = node.params.get("name") if node.kind in MODEL_KINDS else None
        if not isinstance(name, str):
            continue
        known = served.get(name)
        if known is not None and known.owner != who.team:
            continue
        cpus, replicas = serve_capacity(node)
        before = claims.get(name)
        if before is not None:
            cpus, replicas = max(cpus, before[1].cpus), max(replicas, before[1].replicas)
        claims[name] = (name, ServedName(who.team, cpus, replicas), known is None)
    return list(claims.values())


def refusal(who: Principal, problems: list[Problem]) -> FabricError:
    """One 403 for all of them: the first names the field; every one is listed."""
    first = problems[0]
    return FabricError(f"refused for role {who.role} of team {who.team!r}: {len(problems)} policy violation(s); "
                       f"first: {first.message}", code=ErrorCode.POLICY_DENIED, where=first.where, fix=first.fix,
                       problems=tuple(problems))


def serve_capacity(node: NodeSpec) -> tuple[float, int]:
    """(CPUs, replicas) a serve or promote node's application may hold at its peak: replicas (autoscaling's
    max_replicas, else num_replicas) × replica_cpus; a promotion holds a canary beside the stable arm."""
    params = node.params
    scaling = params.get("autoscaling")
    replicas = _number(scaling.get("max_replicas", 1) if isinstance(scaling, dict) else params.get("num_replicas", 1),
                       1.0)
    default = 1.0 if node.kind == "llm_serve" else 0.1  # an llm_serve replica takes a whole CPU by default
    cpus = _number(params.get("replica_cpus", default), default)
    arms = 2 if node.kind == "promote" else 1
    return replicas * cpus * arms, int(replicas) * arms


def _number(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return default  # the kind's own check reports a bad value; capacity counts the default
    return float(value)


class _Denier:
    def __init__(self, who: Principal, found: list[Problem]) -> None:
        self.who, self.found = who, found

    def __call__(self, where: str, rule: str, message: str, fix: str) -> None:
        self.found.append(Problem(ErrorCode.POLICY_DENIED, where,
                                  f"{message} (rule {rule}, role {self.who.role})", fix))


def _weightless(node: NodeSpec, default: Resources | None) -> bool:
    """Does this node ask for nothing Ray could not find on the head? (0 CPUs, no GPU, no custom resource.)"""
    def pick(field: str) -> Any:
        own = getattr(node.resources, field) if node.resources is not None else None
        return own if own is not None else (getattr(default, field) if default is not None else None)

    custom = {**(default.custom if default else {}), **(node.resources.custom if node.resources else {})}
    cpu = pick("cpu")
    return cpu is not None and float(cpu) == 0 and not pick("gpu") and not pick("gpu_mem") and not custom


def _placement(deny: _Denier, resources: Resources | None, where: str, config: TeamConfig) -> None:
    """No tenant node on the head, whatever the role; node-pinning resources are for admins; a runner stays
    within its pools and the resources its team was granted."""
    if resources is None:
        return
    who = deny.who
    allowed = {f"{POOL_RESOURCE_PREFIX}{pool}" for pool in config.pools} | set(config.resources)
    for name in resources.custom:
        field = f"{where}.custom.{name}"
        if name == HEAD_RESOURCE:
            deny(field, "placement.head", f"{name!r} places work on the head node, where the store and tokens live",
                 "remove it: tenant work never runs on the head")
        elif name.startswith(NODE_RESOURCE_PREFIX) and not who.admin:
            deny(field, "placement.node", f"{name!r} pins work to one node; only an admin token may",
                 "remove it and name a pool instead")
        elif who.role is Role.RUNNER and not name.startswith(NODE_RESOURCE_PREFIX) and name not in allowed:
            deny(field, "placement.resource", f"custom resource {name!r} is outside this team's pools and "
                 f"resources ({', '.join(sorted(allowed)) or 'none'})",
                 "use a pool or resource listed for the team in the tokens file's teams: section")


def _runner_node(deny: _Denier, node: NodeSpec, where: str, config: TeamConfig) -> None:
    if node.kind == "python_task" and node.entrypoint:
        _entrypoint(deny, node.entrypoint, f"{where}.entrypoint", config)
    elif node.kind not in BUILTIN_KINDS | {"python_task"}:
        deny(f"{where}.kind", "code.kind", f"kind {node.kind!r} is not one a runner may use",
             f"use python_task with a registered entrypoint, or one of {', '.join(sorted(BUILTIN_KINDS))}")
    if node.image and node.image not in config.images:
        deny(f"{where}.image", "code.image", f"image {node.image!r} is not one of this team's images",
             "leave image out, or ask an admin to list it under the team's images")
    for name in node.env:
        if _CODE_ENV_VARS.match(name):
            deny(f"{where}.env.{name}", "code.env", f"environment variable {name!r} can make the worker run other code",
                 f"remove {name!r}")
    if node.pool and node.pool not in config.pools:
        deny(f"{where}.pool", "placement.pool", f"pool {node.pool!r} is not one of this team's pools "
             f"({', '.join(config.pools) or 'none'})", "name one of the team's pools, or none")
    if node.kind == "sql" and isinstance(node.params.get("query"), str) and \
            _SQL_FILE_FUNCTIONS.search(node.params["query"]):
        deny(f"{where}.params.query", "sql.files", "the query reads files on the worker (a read_*/scan_* function)",
             "query only the node's ins, by name")
    if node.kind in MODEL_KINDS and "tracking_uri" in node.params:
        deny(f"{where}.params.tracking_uri", "serve.tracking_uri", "a model is code: a runner serves models from "
             "the cluster's MLflow store only", "remove params.tracking_uri")


def _entrypoint(deny: _Denier, entrypoint: str, where: str, config: TeamConfig) -> None:
    module, _, attribute = entrypoint.partition(":")
    prefixes = config.code_prefixes()
    if not any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
        deny(where, "code.entrypoint", f"entrypoint {entrypoint!r} is outside the registered packages "
             f"({', '.join(prefixes)})", "call a function of a registered package, or ask an admin to add the "
             "package to the team's packages")
    elif "." in attribute or attribute.startswith("_"):
        # `jobs.x:os.system` walks out of the package through a module attribute.
        deny(where, "code.entrypoint", f"entrypoint {entrypoint!r} must name a public function of the module "
             "itself (one name after ':', not starting with '_')", "write it as 'package.module:function'")


def _runner_submission(deny: _Denier, runtime: RuntimeParams, config: TeamConfig, inline_code: Iterable[str],
                       job_runtime_env: Mapping[str, Any]) -> None:
    for entrypoint in sorted(inline_code):
        deny("entrypoint", "code.inline", f"the function of {entrypoint!r} would be shipped pickled (a notebook "
             "DAG); a runner runs registered code only", "use a developer token, or a registered package")
    env = runtime.runtime_env
    if env is not None:
        for key in ("working_dir", "py_modules"):
            if getattr(env, key):
                deny(f"runtime_params.runtime_env.{key}", "code.runtime_env", f"runtime_env.{key} ships code",
                     f"remove runtime_env.{key}: a runner runs registered code only")
        for name in env.env_vars:
            if _CODE_ENV_VARS.match(name):
                deny(f"runtime_params.runtime_env.env_vars.{name}", "code.env",
                     f"environment variable {name!r} can make the worker run other code", f"remove {name!r}")
    for key in CODE_ENV_KEYS:
        if job_runtime_env.get(key):
            deny(f"job_runtime_env.{key}", "code.runtime_env", f"this driver's runtime_env.{key} would ship code "
                 "to the nodes", f"connect without runtime_env {key}")
    pool = runtime.affinity.compute_pool if runtime.affinity else None
    if pool and pool not in config.pools:
        deny("runtime_params.affinity.compute_pool", "placement.pool", f"pool {pool!r} is not one of this team's "
             f"pools ({', '.join(config.pools) or 'none'})", "name one of the team's pools, or none")


def _serving(deny: _Denier, nodes: list[NodeSpec], who: Principal, config: TeamConfig,
             served: Mapping[str, ServedName]) -> None:
    """A served name is its first team's; a team's served capacity stays under its serve limits."""
    asked: dict[str, tuple[float, int]] = {}
    cpus_field = replicas_field = ""
    for index, node in enumerate(nodes):
        name = node.params.get("name") if node.kind in MODEL_KINDS else None
        if not isinstance(name, str):
            continue
        known = served.get(name)
        if known is not None and known.owner != who.team:
            deny(f"nodes[{index}].params.name", "serve.owner", f"the served name {name!r} belongs to team "
                 f"{known.owner!r}", "choose another name: only its team (and an admin) may deploy or promote it")
        cpus, replicas = serve_capacity(node)
        cpus_field = f"nodes[{index}].params.replica_cpus"
        replicas_field = f"nodes[{index}].params." + ("autoscaling.max_replicas"
                                                      if isinstance(node.params.get("autoscaling"), dict)
                                                      else "num_replicas")
        before = asked.get(name, (0.0, 0))
        asked[name] = (max(before[0], cpus), max(before[1], replicas))
    if not asked:
        return
    others = [s for n, s in served.items() if s.owner == who.team and n not in asked]
    total_cpus = sum(s.cpus for s in others) + sum(c for c, _ in asked.values())
    total_replicas = sum(s.replicas for s in others) + sum(r for _, r in asked.values())
    limits = config.serve
    if limits.max_cpus is not None and total_cpus > limits.max_cpus + 1e-9:
        deny(cpus_field, "serve.capacity", f"team {who.team!r} would serve {total_cpus:g} CPUs "
             f"(replicas × replica_cpus over its served names), over its max_cpus {limits.max_cpus:g}",
             "ask for fewer replicas or replica_cpus, or an admin raises teams.<team>.serve.max_cpus")
    if limits.max_replicas is not None and total_replicas > limits.max_replicas:
        deny(replicas_field, "serve.capacity", f"team {who.team!r} would serve {total_replicas} "
             f"replicas over its served names, over its max_replicas {limits.max_replicas}",
             "ask for fewer replicas, or an admin raises teams.<team>.serve.max_replicas")
