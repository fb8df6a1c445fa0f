"""The engine's quota book: each team's ledger lives in its quota actor; the copies here are replicas
that the admission round checks against, then the round's admissions are confirmed by the actors
(one call per team). An actor that cannot answer refuses everything (fail closed)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ray

from fabric.errors import FabricError
from fabric.schedule.admission import Request
from fabric.schedule.quota import Budget, QuotaBook
from fabric.states import Wait, WaitReason

log = logging.getLogger(__name__)

QUOTA_CALL_TIMEOUT_S = 5.0


class ActorQuotaBook(QuotaBook):
    def __init__(self, budgets: Mapping[str, Budget] | None, clock: Callable[[], float],
                 saved: Callable[[str], dict[str, Any] | None] | None = None, *,
                 actor: Callable[[str], Any]) -> None:
        """`actor(team)` finds or makes the team's quota actor: the registry passes
        `fabric.actors.quota.get_or_create_quota_actor` (execute never imports the control plane)."""
        super().__init__(budgets, clock, saved)
        self._make_actor = actor
        self._actors: dict[str, Any] = {}
        self._synced: set[str] = set()
        self._why: dict[str, str] = {}  # team -> why its actor could not be used (a squatter: CONTROL_IMPOSTOR)

    def _actor(self, team: str) -> Any:
        if team not in self._actors:
            self._actors[team] = self._make_actor(team)
        return self._actors[team]

    def commit(self, admitted: Iterable[Request]) -> dict[str, Wait]:
        by_team: dict[str, list[Request]] = {}
        for request in admitted:
            if request.team in self.ledgers:
                by_team.setdefault(request.team, []).append(request)
        now = self._clock()
        # A team this book has not synced yet (it just started, or its actor restarted) is told first what
        # runs: the actor may hold bookings of an earlier registry that no one would ever release.
        refs = {team: self._book(team, requests, now, sync=team not in self._synced)
                for team, requests in by_team.items()}
        refused: dict[str, Wait] = {}
        for team, requests in by_team.items():
            reply = self._get(team, refs[team])
            if reply is None and team in self._synced:  # restarted since: it knows nothing yet
                self._synced.discard(team)
                reply = self._get(team, self._book(team, requests, now, sync=True))
            if reply is None:
                why = Wait(WaitReason.QUOTA, self._why.pop(team, "")
                           or f"team {team} quota actor unavailable (held until it answers)")
                refused.update({r.key: why for r in requests})
                for request in requests:
                    self.ledgers[team].stop(request.key)
                continue
            self._synced.add(team)
            _, held, state = reply
            refused.update(held)
            self.ledgers[team].load(state)  # the actor's truth, with other admitters' bookings
        return refused

    def _book(self, team: str, requests: list[Request], now: float, *, sync: bool) -> Any:
        try:
            actor = self._actor(team)
            if sync:  # what runs, less this round's tentative bookings, which the book call makes for real
                state = self.ledgers[team].state()
                for request in requests:
                    state["running"].pop(request.key, None)
                actor.sync.remote(dataclasses.asdict(self.ledgers[team].budget), state, now)
            return actor.book.remote(requests, now)  # after the sync: one caller's calls run in order
        except FabricError as exc:  # a squatter under the actor's name: the team is held, saying so
            log.error("the quota actor of team %s: %s", team, exc)
            self._why[team] = f"team {team} held: {exc.message}"
            return None
        except Exception:  # noqa: BLE001 - refused by the caller, as if it had said no
            return None

    def _get(self, team: str, ref: Any) -> Any:
        if ref is None:
            return None
        try:
            return ray.get(ref, timeout=QUOTA_CALL_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - dead, restarting or slow: fail closed, look it up again next round
            log.warning("the quota actor of team %s did not answer", team, exc_info=True)
            self._actors.pop(team, None)
            self._synced.discard(team)
            return None

    def release(self, team: str, key: str) -> None:
        super().release(team, key)
        actor = self._actors.get(team)
        if actor is not None:
            try:  # not awaited: a lost release is made good by the next sync, which sends what runs
                actor.release.remote([key], self._clock())
            except Exception:  # noqa: BLE001
                self._actors.pop(team, None)


__all__ = ["ActorQuotaBook"]
