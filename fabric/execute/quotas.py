"""The engine's quota book: the ledgers here are a local mirror that admission decides against on the engine
thread, and each team's quota actor is kept in step from a thread of its own (`_QuotaSync`), so no quota
actor is ever awaited while the engine decides. A team whose actor has not answered yet, or stopped
answering, admits nothing (fail closed) and its waiting nodes say why; other teams do not notice."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import ray

from fabric.errors import FabricError
from fabric.schedule.admission import Request
from fabric.schedule.quota import Budget, QuotaBook
from fabric.states import Wait, WaitReason

log = logging.getLogger(__name__)

QUOTA_CALL_TIMEOUT_S = 5.0  # an actor slower than this is taken as down: its team is held until it answers
RESYNC_EVERY_S = 1.0  # how often a held team's actor is asked again
UNAVAILABLE = "quota actor unavailable (held until it answers)"


class ActorQuotaBook(QuotaBook):
    def __init__(self, budgets: Mapping[str, Budget] | None, clock: Callable[[], float],
                 saved: Callable[[str], dict[str, Any] | None] | None = None, *,
                 actor: Callable[[str], Any], default: Budget | None = None) -> None:
        """`actor(team)` finds or makes the team's quota actor: the registry passes
        `fabric.actors.quota.get_or_create_quota_actor` (execute never imports the control plane)."""
        super().__init__(budgets, clock, saved, default=default)
        self._lock = threading.Lock()  # the mirror: the engine decides under it, the sync thread loads under it
        self._up: set[str] = set()  # teams whose actor has the mirror's state and answers
        self._down: dict[str, str] = {}  # team -> why it is held
        self._sync = _QuotaSync(self, actor)

    # -- the engine's side: local and never blocking --------------------------------------------------

    def _held(self, request: Request) -> Wait | None:
        team, ledger = request.team, self.ledger(request.team)
        if team in self._up or ledger is None:
            return None
        if request.gpu <= 0 and ledger.budget.cpu is None:
            return None  # nothing of its budget can hold it: no need to wait for the actor (it hears at its sync)
        self._sync.want(team)
        return Wait(WaitReason.QUOTA, f"team {team} {self._down.get(team, UNAVAILABLE)}")

    def check(self, request: Request) -> Wait | None:
        with self._lock:
            return self._held(request) or super().check(request)

    def holds(self, request: Request) -> Wait | None:
        with self._lock:
            return self._held(request) or super().holds(request)

    def commit(self, admitted: Iterable[Request]) -> dict[str, Wait]:
        """The mirror booked them already: the actors hear of it from the sync thread. Nothing is refused here."""
        by_team: dict[str, list[Request]] = {}
        for request in admitted:
            if request.team in self.ledgers:
                by_team.setdefault(request.team, []).append(request)
        now = self._clock()
        for team, requests in by_team.items():
            self._sync.send(team, "book", requests, now)
        return {}

    def release(self, team: str, key: str) -> None:
        with self._lock:
            super().release(team, key)
        if team in self.ledgers:
            self._sync.send(team, "release", [key], self._clock())

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return super().snapshot()

    # -- the sync thread's side -------------------------------------------------------------------------

    def _state_for_sync(self, team: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        with self._lock:
            ledger = self.ledger(team)
            return None if ledger is None else (dataclasses.asdict(ledger.budget), ledger.state())

    def _answered(self, team: str, state: dict[str, Any] | None) -> None:
        """The actor has the mirror's state: the team admits again. Its state, which holds other admitters'
        bookings too, becomes the mirror (what this engine books is in it: it was sent first)."""
        with self._lock:
            if state is not None and team in self.ledgers:
                self.ledgers[team].load(state)
            self._up.add(team)
            self._down.pop(team, None)

    def _lost(self, team: str, why: str) -> None:
        with self._lock:
            if team in self._up or team not in self._down:
                log.warning("fabric holds team %s: %s", team, why)
            self._up.discard(team)
            self._down[team] = why

    def is_up(self, team: str) -> bool:
        return team in self._up

    def close(self) -> None:
        """Stop the sync thread (a book made outside the registry, as in a test, before its Ray goes)."""
        self._sync.close()


def _book(actor: Any, *, requests: list[Request], now: float) -> Any:
    return actor.book.remote(requests, now)


@dataclasses.dataclass
class _Call:
    team: str
    kind: str  # sync | book
    deadline: float


class _QuotaSync:
    """One daemon thread: makes or finds each team's actor, syncs it with the mirror, sends bookings and
    releases, and waits on the replies with a deadline. Only this thread calls Ray for quotas."""

    def __init__(self, book: ActorQuotaBook, make_actor: Callable[[str], Any]) -> None:
        self._book = book
        self._make_actor = make_actor
        self._actors: dict[str, Any] = {}
        self._inbox: queue.SimpleQueue[tuple[str, str, list[Any], float]] = queue.SimpleQueue()
        self._wanted: dict[str, float] = {}  # team -> when to ask it again (held teams)
        self._syncing: set[str] = set()
        self._calls: dict[Any, _Call] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()
        self._inbox.put(("", "wake", [], 0.0))

    def want(self, team: str) -> None:
        """A held team: sync it soon (called on the engine thread: only enqueues)."""
        with self._lock:
            if team in self._wanted:
                return
            self._wanted[team] = 0.0
        self.send(team, "wake", [], 0.0)

    def send(self, team: str, kind: str, requests: list[Any], now: float) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="fabric-quota-sync", daemon=True)
                    self._thread.start()
        self._inbox.put((team, kind, requests, now))

    def _loop(self) -> None:
        while not self._closed.is_set():
            if not ray.is_initialized():  # Ray went (a driver's shutdown): a call now would start a new one
                time.sleep(RESYNC_EVERY_S)
                continue
            try:
                self._step()
            except Exception:  # noqa: BLE001 - the thread must live: a held team is asked again next step
                log.exception("fabric quota sync failed")
                time.sleep(RESYNC_EVERY_S)

    def _step(self) -> None:
        wait_s = 0.05 if self._calls else 0.5
        try:
            items = [self._inbox.get(timeout=wait_s)]
        except queue.Empty:
            items = []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for team, kind, requests, now in items:
            if kind == "book" and self._book.is_up(team):
                self._call(team, "book", partial(_book, requests=requests, now=now))
            elif kind == "release" and self._book.is_up(team):
                actor = self._actors.get(team)
                if actor is not None:  # not awaited: a lost release is made good by the next sync
                    try:
                        actor.release.remote(list(requests), now)
                    except Exception:  # noqa: BLE001
                        self._actors.pop(team, None)
        now_m = time.monotonic()
        with self._lock:
            due = [team for team, at in self._wanted.items() if at <= now_m and team not in self._syncing]
        for team in due:
            self._start_sync(team)
        self._collect()

    def _start_sync(self, team: str) -> None:
        found = self._book._state_for_sync(team)
        if found is None:
            with self._lock:
                self._wanted.pop(team, None)
            return
        budget, state = found
        self._syncing.add(team)
        with self._lock:
            self._wanted[team] = time.monotonic() + RESYNC_EVERY_S
        self._call(team, "sync", lambda a: a.sync.remote(budget, state, self._book._clock()))

    def _call(self, team: str, kind: str, call: Callable[[Any], Any]) -> None:
        try:
            if team not in self._actors:
                self._actors[team] = self._make_actor(team)
            ref = call(self._actors[team])
        except FabricError as exc:  # a squatter under the actor's name (CONTROL_IMPOSTOR): held, saying so
            log.error("the quota actor of team %s: %s", team, exc)
            self._actors.pop(team, None)
            self._syncing.discard(team)
            self._fail(team, f"held: {exc.message}")
            return
        except Exception as exc:  # noqa: BLE001 - no actor: the team is held, and asked again
            self._actors.pop(team, None)
            self._syncing.discard(team)
            self._fail(team, f"quota actor unavailable (held until it answers: {type(exc).__name__})")
            return
        self._calls[ref] = _Call(team, kind, time.monotonic() + QUOTA_CALL_TIMEOUT_S)

    def _collect(self) -> None:
        if not self._calls:
            return
        ready, _ = ray.wait(list(self._calls), num_returns=len(self._calls), timeout=0)
        for ref in ready:
            call = self._calls.pop(ref)
            try:
                reply = ray.get(ref, timeout=0)
            except Exception as exc:  # noqa: BLE001 - dead or restarting
                self._actors.pop(call.team, None)
                self._syncing.discard(call.team)
                self._fail(call.team, f"quota actor unavailable (held until it answers: {type(exc).__name__})")
                continue
            if call.kind == "sync":
                self._syncing.discard(call.team)
                with self._lock:
                    self._wanted.pop(call.team, None)
                self._book._answered(call.team, reply)
            elif reply is None:  # the actor restarted and knows nothing: sync it with the mirror
                self._fail(call.team, UNAVAILABLE)
            elif reply[1]:  # another admitter took the budget first: the mirror takes the actor's truth
                log.warning("quota actor of team %s refused %s", call.team, sorted(reply[1]))
                self._book._answered(call.team, reply[2])
        now = time.monotonic()
        for ref, call in list(self._calls.items()):
            if call.deadline <= now:
                del self._calls[ref]
                self._syncing.discard(call.team)
                self._fail(call.team, f"quota actor did not answer within {QUOTA_CALL_TIMEOUT_S:g} s "
                                      "(held until it answers)")

    def _fail(self, team: str, why: str) -> None:
        self._book._lost(team, why)
        with self._lock:
            self._wanted.setdefault(team, time.monotonic() + RESYNC_EVERY_S)


__all__ = ["QUOTA_CALL_TIMEOUT_S", "ActorQuotaBook"]
