"""Team budgets, pure: concurrent CPU and GPU, GPU-hours per day charged from GPU-seconds as nodes
run, and a burst above the concurrent budget for high priority while its credits last. The clock
is injected; a day is a UTC calendar day."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fabric.schedule.admission import Request
from fabric.spec import Priority
from fabric.states import Wait, WaitReason

NO_TEAM = "-"  # the team of work submitted without one


@dataclass(frozen=True)
class Budget:
    cpu: float | None = None  # concurrent CPUs; None: no limit
    gpu: float | None = None  # concurrent GPUs
    gpu_hours_per_day: float | None = None
    burst_gpu: float = 0.0  # extra concurrent GPUs for high and critical work ...
    burst_gpu_hours_per_day: float = 0.0  # ... while these credits last


@dataclass
class _Usage:
    day: dt.date
    cpu: float = 0.0
    gpu: float = 0.0
    gpu_seconds: float = 0.0
    burst_gpu_seconds: float = 0.0
    running: dict[str, tuple[float, float, float, bool]] = field(default_factory=dict)  # key: cpu, gpu, since, burst


class QuotaLedger:
    """One team's budget and use. `check` says why a request must wait (or None); `start` and `stop`
    book running work; `accrue` charges GPU-seconds up to now (call it on every scheduling tick)."""

    def __init__(self, team: str, budget: Budget, clock: Callable[[], float]) -> None:
        self.team = team
        self.budget = budget
        self._clock = clock
        self._usage = _Usage(self._day(clock()))

    @staticmethod
    def _day(at: float) -> dt.date:
        return dt.datetime.fromtimestamp(at, dt.UTC).date()

    def _roll(self, now: float) -> None:
        day = self._day(now)
        if day != self._usage.day:  # a new day: the day's GPU-hours start again; running work carries on
            midnight = dt.datetime.combine(day, dt.time(0), dt.UTC).timestamp()
            self.accrue(midnight, _roll=False)  # the old day is charged up to its end
            self._usage.day, self._usage.gpu_seconds, self._usage.burst_gpu_seconds = day, 0.0, 0.0

    def accrue(self, now: float | None = None, *, _roll: bool = True) -> None:
        now = self._clock() if now is None else now
        if _roll:
            self._roll(now)
        usage = self._usage
        for key, (cpu, gpu, since, burst) in list(usage.running.items()):
            seconds = max(now - since, 0.0) * gpu
            usage.gpu_seconds += seconds
            if burst:
                usage.burst_gpu_seconds += seconds
            usage.running[key] = (cpu, gpu, now, burst)

    def check(self, request: Request) -> Wait | None:
        now = self._clock()
        self.accrue(now)
        usage, budget = self._usage, self.budget
        if budget.cpu is not None and usage.cpu + request.cpu > budget.cpu + 1e-9:
            return Wait(WaitReason.QUOTA, f"team {self.team} cpu {usage.cpu:g}/{budget.cpu:g} in use")
        if request.gpu > 0 and budget.gpu_hours_per_day is not None:
            used = usage.gpu_seconds / 3600
            if used >= budget.gpu_hours_per_day - 1e-9:
                return Wait(WaitReason.QUOTA,
                            f"team {self.team} gpu_hours {used:.1f}/{budget.gpu_hours_per_day:.1f} today")
        over = budget.gpu is not None and usage.gpu + request.gpu > budget.gpu + 1e-9
        if request.gpu > 0 and over and not self._may_burst(request):
            return Wait(WaitReason.QUOTA, f"team {self.team} gpu {usage.gpu:g}/{budget.gpu:g} in use")
        return None

    def _may_burst(self, request: Request) -> bool:
        usage, budget = self._usage, self.budget
        return (request.priority.rank >= Priority.HIGH.rank and budget.gpu is not None
                and usage.gpu + request.gpu <= budget.gpu + budget.burst_gpu + 1e-9
                and usage.burst_gpu_seconds / 3600 < budget.burst_gpu_hours_per_day)

    def start(self, request: Request) -> None:
        if request.key in self._usage.running:  # booked twice would count its GPUs twice, for good
            self.stop(request.key)
        now = self._clock()
        self.accrue(now)
        burst = self.budget.gpu is not None and self._usage.gpu + request.gpu > self.budget.gpu + 1e-9
        self._usage.cpu += request.cpu
        self._usage.gpu += request.gpu
        self._usage.running[request.key] = (request.cpu, request.gpu, now, burst)

    def stop(self, key: str) -> None:
        self.accrue()
        booked = self._usage.running.pop(key, None)
        if booked is not None:
            self._usage.cpu -= booked[0]
            self._usage.gpu -= booked[1]

    def usage_state(self) -> dict[str, float | str]:
        """Today's charged use, to keep in the store: a restarted registry resumes the day's count."""
        self.accrue()
        usage = self._usage
        return {"day": usage.day.isoformat(), "gpu_seconds": usage.gpu_seconds,
                "burst_gpu_seconds": usage.burst_gpu_seconds}

    def restore(self, state: dict[str, float | str] | None) -> None:
        """Take back today's use from `usage_state()` (another day's is ignored: that budget is spent)."""
        if state and state.get("day") == self._usage.day.isoformat():
            self._usage.gpu_seconds = float(state.get("gpu_seconds", 0.0))
            self._usage.burst_gpu_seconds = float(state.get("burst_gpu_seconds", 0.0))

    def state(self) -> dict[str, Any]:
        """Everything the ledger knows (the day's use and what runs), for a copy elsewhere to `load`."""
        self.accrue()
        usage = self._usage
        return {"day": usage.day.isoformat(), "gpu_seconds": usage.gpu_seconds,
                "burst_gpu_seconds": usage.burst_gpu_seconds,
                "running": {key: list(value) for key, value in usage.running.items()}}

    def load(self, state: Mapping[str, Any]) -> None:
        """Become the ledger that `state()` described; in-use CPU and GPU are the sums of what runs."""
        running = {key: (float(c), float(g), float(since), bool(b)) for key, (c, g, since, b)
                   in state.get("running", {}).items()}
        self._usage = _Usage(dt.date.fromisoformat(state["day"]), sum(v[0] for v in running.values()),
                             sum(v[1] for v in running.values()), float(state.get("gpu_seconds", 0.0)),
                             float(state.get("burst_gpu_seconds", 0.0)), running)
        self.accrue()  # rolls over to today, when `state` is from yesterday

    def snapshot(self) -> dict[str, float | str | None]:
        self.accrue()
        budget, usage = self.budget, self._usage
        return {"team": self.team, "day": usage.day.isoformat(), "cpu_in_use": usage.cpu, "cpu_budget": budget.cpu,
                "gpu_in_use": usage.gpu, "gpu_budget": budget.gpu, "gpu_hours_today": usage.gpu_seconds / 3600,
                "gpu_hours_per_day": budget.gpu_hours_per_day, "burst_gpu_hours_today": usage.burst_gpu_seconds / 3600}


class QuotaBook:
    """Every team's ledger, as the admission round uses them: `check` asks and books tentatively,
    `commit` confirms the round's admissions (here always: one process holds the only copy) and
    returns the keys refused with why; `release` ends a booking. The engine's subclass keeps the
    ledgers in per-team quota actors and these copies are its replicas."""

    def __init__(self, budgets: Mapping[str, Budget] | None, clock: Callable[[], float],
                 saved: Callable[[str], dict[str, Any] | None] | None = None, *,
                 default: Budget | None = None) -> None:
        """`default`: the budget of a team `budgets` does not name (its ledger is made when first seen)."""
        self._clock = clock
        self._saved = saved
        self._default = default
        self.ledgers = {team: QuotaLedger(team, budget, clock) for team, budget in (budgets or {}).items()}
        for team, ledger in self.ledgers.items():
            if saved is not None:
                ledger.restore(saved(team))

    def ledger(self, team: str) -> QuotaLedger | None:
        """The team's ledger; made from the default budget the first time a team without its own is seen
        (work of no team, a local SDK user's, has no default budget: whoever drives Ray directly owns it)."""
        ledger = self.ledgers.get(team)
        if ledger is None and self._default is not None and team != NO_TEAM:
            ledger = self.ledgers[team] = QuotaLedger(team, self._default, self._clock)
            if self._saved is not None:
                ledger.restore(self._saved(team))
        return ledger

    def check(self, request: Request) -> Wait | None:
        ledger = self.ledger(request.team)
        if ledger is None:
            return None
        reason = ledger.check(request)
        if reason is None:
            ledger.start(request)  # booked now: the next request in this round sees it
        return reason

    def holds(self, request: Request) -> Wait | None:
        """Why its own team's quota holds `request`, booking nothing."""
        ledger = self.ledger(request.team)
        return ledger.check(request) if ledger is not None else None

    def commit(self, admitted: Iterable[Request]) -> dict[str, Wait]:
        return {}

    def release(self, team: str, key: str) -> None:
        ledger = self.ledgers.get(team)
        if ledger is not None:
            ledger.stop(key)

    def snapshot(self) -> list[dict[str, Any]]:
        return [ledger.snapshot() for ledger in self.ledgers.values()]


__all__ = ["NO_TEAM", "Budget", "QuotaBook", "QuotaLedger"]
