"""Who owns each served model name: claims in Ray's GCS key-value store, made atomically at submit time.

A name belongs to the team whose submission first deployed it (through the gateway or a team-scoped client).
The claim is made before the registry stores the submission and withdrawn if the registry refuses it, so two
teams racing for one name get one owner. The value also keeps the capacity that name's last accepted
deployment asked for, which the code policy sums against a team's serve limits (fabric/spec/policy.py).
Tenant code with Ray access could rewrite these keys, as it could anything on its cluster (docs/security.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fabric.errors import ErrorCode, NotFoundError, Problem
from fabric.spec import load_spec, parse_runtime_params
from fabric.spec.policy import (
    MODEL_KINDS,
    Claim,
    Principal,
    ServedName,
    planned_claims,
    refusal,
    resolved_nodes,
    violations,
)
from fabric.spec.teams import TeamConfig

NAMESPACE = "fabric"
PREFIX = "served:"
T = TypeVar("T")


def _kv() -> Any:
    from ray.experimental import internal_kv

    return internal_kv


def _decode(value: bytes | None) -> ServedName | None:
    if value is None:
        return None
    data = json.loads(value)
    return ServedName(str(data["owner"]), float(data.get("cpus", 0.0)), int(data.get("replicas", 0)))


def _encode(served: ServedName) -> bytes:
    return json.dumps({"owner": served.owner, "cpus": served.cpus, "replicas": served.replicas}).encode()


def owner(name: str) -> ServedName | None:
    """The served name's claim, or None when no team has claimed it."""
    return _decode(_kv()._internal_kv_get(PREFIX + name, namespace=NAMESPACE))


def served_names() -> dict[str, ServedName]:
    """Every claimed name (a few hundred at most: one GCS call, then one per name)."""
    kv = _kv()
    found: dict[str, ServedName] = {}
    for key in kv._internal_kv_list(PREFIX, namespace=NAMESPACE):
        key = key.decode() if isinstance(key, bytes) else key
        served = _decode(kv._internal_kv_get(key, namespace=NAMESPACE))
        if served is not None:
            found[key.removeprefix(PREFIX)] = served
    return found


def claim(name: str, served: ServedName) -> bool:
    """Claim an unclaimed name for `served.owner`; False when another claim was there first (it is kept)."""
    already = _kv()._internal_kv_put(PREFIX + name, _encode(served), False, namespace=NAMESPACE)
    return not already


def update(name: str, served: ServedName) -> None:
    """Record a new capacity for a name its owner redeployed."""
    _kv()._internal_kv_put(PREFIX + name, _encode(served), True, namespace=NAMESPACE)


def release(name: str) -> None:
    """Withdraw a claim whose submission the registry refused."""
    _kv()._internal_kv_del(PREFIX + name, namespace=NAMESPACE)


def release_all(names: list[str]) -> None:
    for name in names:
        release(name)


def settle(claims: list[Claim]) -> None:
    """After the registry took the submission: names the team already owned get its new capacity."""
    for name, served, new in claims:
        if not new:
            update(name, served)


@dataclass(frozen=True)
class Guard:
    """A team-scoped client's code policy: who submits, under which team config. The gateway's own runtime_env
    is its deployer's, not the caller's (`trust_driver_env`): the policy does not read it there."""

    who: Principal
    config: TeamConfig
    trust_driver_env: bool = False

    def check(self, raw: Any, params: Mapping[str, Any], inline_code: Iterable[str] = (),
              job_runtime_env: Mapping[str, Any] | None = None) -> list[Claim]:
        """Apply the code policy to a raw spec and runtime params, with the served names as they are now; raise
        POLICY_DENIED with every violation, else return the served names to claim or update."""
        dag, runtime = load_spec(raw), parse_runtime_params(dict(params))  # the registry's own errors, sooner
        nodes = resolved_nodes(dag, runtime)
        served = served_names() if any(n.kind in MODEL_KINDS for n in nodes) else {}
        problems = violations(dag, runtime, self.who, self.config, inline_code=inline_code, served=served,
                              job_runtime_env=None if self.trust_driver_env else job_runtime_env)
        if problems:
            raise refusal(self.who, problems)
        return planned_claims(nodes, self.who, served)

    def claim_all(self, claims: list[Claim]) -> list[str]:
        """Claim the new names of an accepted submission; one another team claimed meanwhile is refused (and the
        names claimed so far withdrawn). Returns the names claimed here, to withdraw if the registry refuses."""
        claimed: list[str] = []
        for name, served, new in claims:
            if not new:
                continue
            if claim(name, served):
                claimed.append(name)
                continue
            now = owner(name)
            if now is not None and now.owner != served.owner and not self.who.admin:
                release_all(claimed)
                raise refusal(self.who, [Problem(ErrorCode.POLICY_DENIED, "params.name",
                                                 f"the served name {name!r} belongs to another team (rule "
                                                 f"serve.owner, role {self.who.role})", "choose another name")])
        return claimed


def guarded(guard: Guard | None, claims: list[Claim], call: Callable[[], T]) -> T:
    """Claim the names, make the registry call, withdraw the claims if it refused (or, for a run by name that
    max_active_runs skipped, deployed nothing), else record the names' new capacity."""
    if guard is None or not claims:
        return call()
    claimed = guard.claim_all(claims)
    try:
        reply = call()
    except BaseException:
        release_all(claimed)
        raise
    release_all(claimed) if isinstance(reply, dict) and reply.get("skipped") else settle(claims)
    return reply


async def guarded_async(guard: Guard | None, claims: list[Claim], call: Callable[[], Awaitable[T]]) -> T:
    """`guarded` for event loops: the GCS calls run in a thread."""
    if guard is None or not claims:
        return await call()
    claimed = await asyncio.to_thread(guard.claim_all, claims)
    try:
        reply = await call()
    except BaseException:
        await asyncio.to_thread(release_all, claimed)
        raise
    await asyncio.to_thread(settle, claims)
    return reply


def pick_version(versions: list[dict[str, Any]], version: int | None) -> dict[str, Any]:
    """The spec of a pipeline's `version` (None: its latest) among its versions' rows."""
    chosen = [v for v in versions if version is None or v["version"] == version]
    if not chosen:
        raise NotFoundError(f"the pipeline has no version {version}", code=ErrorCode.NOT_FOUND, where="version",
                            fix="`fabric pipelines` lists the versions")
    return dict(max(chosen, key=lambda v: v["version"])["spec"])
