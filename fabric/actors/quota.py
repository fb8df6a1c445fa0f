"""The quota actor: one per team, named and detached, a thin shell over the pure QuotaLedger.

It is the one place a team's budget is booked, so admissions racing from anywhere never overspend
it (an actor runs one call at a time). The admitter keeps the time: each call brings its `now`, so a
clock injected in tests reaches the ledger. A fresh or restarted actor knows nothing and books
nothing until the admitter `sync`s it with what runs and the day's use (fail closed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from fabric.actors import HEAD_RESOURCE, NAMESPACE
from fabric.actors.guard import Capped, verified
from fabric.capability import check, load_or_create_key, proof, quota_cap
from fabric.execute.sealed import sealed
from fabric.schedule.admission import Request
from fabric.schedule.quota import Budget, QuotaLedger
from fabric.states import Wait

QUOTA_PREFIX = "fabric-quota:"


class QuotaKeeper:
    def __init__(self, team: str) -> None:
        self._team = team
        self._now = 0.0
        self._ledger: QuotaLedger | None = None

    def _tick(self, now: float) -> None:
        self._now = max(self._now, now)  # callers' clocks differ a little: the ledger's never runs back

    def sync(self, budget: dict[str, Any], state: dict[str, Any], now: float) -> dict[str, Any]:
        """Become the ledger `state` describes (what runs, the day's use). Of two counts of the same
        day's GPU-hours the larger is kept: a restarted admitter's saved count may be a minute old."""
        self._tick(now)
        ledger = QuotaLedger(self._team, Budget(**budget), lambda: self._now)
        if self._ledger is not None:
            mine = self._ledger.state()
            if mine["day"] == state["day"]:
                state = {**state, "gpu_seconds": max(mine["gpu_seconds"], state["gpu_seconds"]),
                         "burst_gpu_seconds": max(mine["burst_gpu_seconds"], state["burst_gpu_seconds"])}
        ledger.load(state)
        self._ledger = ledger
        return ledger.state()

    def book(self, requests: list[Request], now: float) -> tuple[list[str], dict[str, Wait], dict[str, Any]] | None:
        """Book what fits the budget: (accepted keys, refused key -> why, the ledger now); None until synced."""
        if self._ledger is None:
            return None
        self._tick(now)
        accepted: list[str] = []
        refused: dict[str, Wait] = {}
        for request in requests:
            reason = self._ledger.check(request)
            if reason is None:
                self._ledger.start(request)
                accepted.append(request.key)
            else:
                refused[request.key] = reason
        return accepted, refused, self._ledger.state()

    def release(self, keys: list[str], now: float) -> dict[str, Any] | None:
        if self._ledger is None:
            return None
        self._tick(now)
        for key in keys:
            self._ledger.stop(key)
        return self._ledger.state()

    def state(self, now: float) -> dict[str, Any] | None:
        if self._ledger is None:
            return None
        self._tick(now)
        return self._ledger.state()


class QuotaFace:
    """What Ray exposes of a team's ledger: every call shows the registry's quota capability, so tenant code
    cannot release its own bookings or reset a day; `prove` answers the registry's challenge (no squatter)."""

    def __init__(self, team: str, key_file: str) -> None:
        key = load_or_create_key(Path(key_file))  # the head's file: this actor runs on the head
        self._key, self._cap, self._team = key, quota_cap(key), team
        self._keeper = QuotaKeeper(team)

    def prove(self, nonce: str) -> str:
        return proof(self._key, f"{QUOTA_PREFIX}{self._team}", nonce)

    def sync(self, cap: str, budget: dict[str, Any], state: dict[str, Any], now: float) -> dict[str, Any]:
        check(self._cap, cap, "the quota actor's sync")
        return self._keeper.sync(budget, state, now)

    def book(self, cap: str, requests: list[Request], now: float
             ) -> tuple[list[str], dict[str, Wait], dict[str, Any]] | None:
        check(self._cap, cap, "the quota actor's book")
        return self._keeper.book(requests, now)

    def release(self, cap: str, keys: list[str], now: float) -> dict[str, Any] | None:
        check(self._cap, cap, "the quota actor's release")
        return self._keeper.release(keys, now)

    def state(self, cap: str, now: float) -> dict[str, Any] | None:
        check(self._cap, cap, "the quota actor's state")
        return self._keeper.state(now)


QuotaActor: Any = ray.remote(sealed(QuotaFace))


def get_or_create_quota_actor(team: str, key_file: str | None = None) -> Capped:
    """The team's quota actor, checked to hold the control key (else CONTROL_IMPOSTOR: the team's admission is
    held with that reason), behind a handle that shows the quota capability on every call."""
    from fabric.settings import settings

    key_file = key_file or settings().control_key_file
    key = load_or_create_key(Path(key_file))
    name = f"{QUOTA_PREFIX}{team}"
    handle = QuotaActor.options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, resources={HEAD_RESOURCE: 0.001},  # beside the registry, on the head
    ).remote(team, key_file)
    verified(handle, key, name)
    return Capped(handle, quota_cap(key))


__all__ = ["QUOTA_PREFIX", "QuotaActor", "QuotaFace", "QuotaKeeper", "get_or_create_quota_actor"]
