"""Who owns each served model name: the gateway's checks against the registry's record, claimed at submit time.

A name belongs to the team whose submission first deployed it (through the gateway or a team-scoped client).
The claim is made before the registry stores the submission and withdrawn if the registry refuses it, so two
teams racing for one name get one owner. The claim also keeps the capacity that name's last accepted deployment
asked for, which the code policy sums against a team's serve limits (fabric/spec/policy.py).

The claims are rows of the registry's store (fabric/record/served.py), read and written only through the
registry's privileged methods (`ServedMethods`, behind the control capability): tenant code on the cluster
can neither read nor forge them. (They were keys in Ray's GCS key-value store, which any Ray task may write;
those keys are no longer read.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fabric.errors import ErrorCode, FabricError, NotFoundError, Problem
from fabric.kinds.serve_kind import NAME_PATTERN
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

T = TypeVar("T")


class ServedBook(Protocol):
    """Where the claims are: a driver's RayClient (fabric/actors/owners.py: the registry, with the control
    capability)."""

    def served_names(self, names: Sequence[str] | None = None) -> dict[str, ServedName]: ...
    def claim_served(self, name: str, served: ServedName) -> tuple[ServedName, bool]: ...
    def update_served(self, name: str, served: ServedName) -> bool: ...
    def release_served(self, name: str, owner: str) -> bool: ...


def _checked(name: Any, served: Any = None) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise FabricError(f"{str(name)[:100]!r} is not a served name", code=ErrorCode.SPEC_FIELD, where="name",
                          fix="a served name is a letter, then letters, digits, '_' or '-'")
    if served is not None and not (isinstance(served, ServedName) and isinstance(served.owner, str)
                                   and served.owner):
        raise FabricError("a served name's claim names its owning team", code=ErrorCode.SPEC_FIELD, where="owner",
                          fix="claim with the submitting team")


class ServedMethods:
    """The registry's side (a mixin of fabric.actors.registry.Registry, privileged on its face): the record's
    served-name rows, the one authority for who owns a name."""

    _store: Any

    def served_names(self, names: list[str] | None = None) -> dict[str, ServedName]:
        if names is not None:
            for name in names:
                _checked(name)
        return dict(self._store.served_names(None if names is None else list(names)))

    def claim_served(self, name: str, served: ServedName) -> tuple[ServedName, bool]:
        _checked(name, served)
        claim, created = self._store.claim_served(name, served, time.time())
        return claim, bool(created)

    def update_served(self, name: str, served: ServedName) -> bool:
        _checked(name, served)
        return bool(self._store.update_served(name, served))

    def release_served(self, name: str, owner: str) -> bool:
        _checked(name)
        return bool(self._store.release_served(name, str(owner)))


@dataclass(frozen=True)
class Guard:
    """A team-scoped client's code policy: who submits, under which team config. The gateway's own runtime_env
    is its deployer's, not the caller's (`trust_driver_env`): the policy does not read it there."""

    who: Principal
    config: TeamConfig
    book: ServedBook
    trust_driver_env: bool = False

    def check(self, raw: Any, params: Mapping[str, Any], inline_code: Iterable[str] = (),
              job_runtime_env: Mapping[str, Any] | None = None) -> list[Claim]:
        """Apply the code policy to a raw spec and runtime params, with the served names as they are now; raise
        POLICY_DENIED with every violation, else return the served names to claim or update."""
        dag, runtime = load_spec(raw), parse_runtime_params(dict(params))  # the registry's own errors, sooner
        nodes = resolved_nodes(dag, runtime)
        served = self.book.served_names() if any(n.kind in MODEL_KINDS for n in nodes) else {}
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
            now, created = self.book.claim_served(name, served)
            if created:
                claimed.append(name)
                continue
            if now.owner != served.owner and not self.who.admin:
                self.release_all(claimed)
                raise refusal(self.who, [Problem(ErrorCode.POLICY_DENIED, "params.name",
                                                 f"the served name {name!r} belongs to another team (rule "
                                                 f"serve.owner, role {self.who.role})", "choose another name")])
        return claimed

    def release_all(self, names: list[str]) -> None:
        """Withdraw this team's claims of a submission the registry refused."""
        for name in names:
            self.book.release_served(name, self.who.team)

    def settle(self, claims: list[Claim]) -> None:
        """After the registry took the submission: names the team already owned get its new capacity."""
        for name, served, new in claims:
            if not new:
                self.book.update_served(name, served)


def guarded(guard: Guard | None, claims: list[Claim], call: Callable[[], T]) -> T:
    """Claim the names, make the registry call, withdraw the claims if it refused (or, for a run by name that
    max_active_runs skipped, deployed nothing), else record the names' new capacity."""
    if guard is None or not claims:
        return call()
    claimed = guard.claim_all(claims)
    try:
        reply = call()
    except BaseException:
        guard.release_all(claimed)
        raise
    guard.release_all(claimed) if isinstance(reply, dict) and reply.get("skipped") else guard.settle(claims)
    return reply


async def guarded_async(guard: Guard | None, claims: list[Claim], call: Callable[[], Awaitable[T]]) -> T:
    """`guarded` for event loops: the registry's claim calls run in a thread."""
    if guard is None or not claims:
        return await call()
    claimed = await asyncio.to_thread(guard.claim_all, claims)
    try:
        reply = await call()
    except BaseException:
        await asyncio.to_thread(guard.release_all, claimed)
        raise
    await asyncio.to_thread(guard.settle, claims)
    return reply


def pick_version(versions: list[dict[str, Any]], version: int | None) -> dict[str, Any]:
    """The spec of a pipeline's `version` (None: its latest) among its versions' rows."""
    chosen = [v for v in versions if version is None or v["version"] == version]
    if not chosen:
        raise NotFoundError(f"the pipeline has no version {version}", code=ErrorCode.NOT_FOUND, where="version",
                            fix="`fabric pipelines` lists the versions")
    return dict(max(chosen, key=lambda v: v["version"])["spec"])
