"""The engine's seams, without Ray: the messages its loop handles, the backend it drives (`Backend`, which
`RayBackend` satisfies), and the few operations `NodeCache` may ask of it (`CacheHost`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fabric.types import AttemptReport, ErrorInfo

if TYPE_CHECKING:
    from fabric.kinds import NodeCall
    from fabric.plan import ExecutionPlan, ResourceUnit
    from fabric.schedule import Action, RunMachine
    from fabric.schedule.admission import Placement

Outcome = tuple[AttemptReport, ErrorInfo | None]  # how an attempt ended: its report, and its error if it failed


@dataclass
class AttemptHandle:
    """The backend's side of one dispatch: the report's ref and one ref per result slot (Ray ObjectRefs)."""

    report: Any  # None for outputs reloaded from the artifact store
    values: dict[str, Any]
    attempt: int


# -- the engine's inbox: everything its loop thread acts on arrives as one of these --------------------


@dataclass(frozen=True)
class Start:
    """A submission was added (or resumed): settle its machine and dispatch what can go."""

    submission_id: str


@dataclass(frozen=True)
class Cancel:
    submission_id: str


@dataclass(frozen=True)
class Done:
    """Dispatch `token` of a node ended (sent from a backend thread)."""

    submission_id: str
    node_id: str
    token: int
    outcome: Outcome


@dataclass(frozen=True)
class Wake:
    """Something outside the machine changed for this submission (its cache's code versions arrived)."""

    submission_id: str


@dataclass(frozen=True)
class Stop:
    """The engine is shutting down: wake the loop so that it sees it."""


Message = Start | Cancel | Done | Wake | Stop


class Backend(Protocol):
    """What the engine needs to run node attempts (the Ray one is `execute.backend.RayBackend`)."""

    def submit(self, call: NodeCall, unit: ResourceUnit, inputs: Sequence[Any], runtime_env: dict[str, Any] | None,
               placement: Placement | None, on_done: Callable[[Outcome], None]) -> AttemptHandle:
        """Start one attempt; `on_done(outcome)` is called, from any thread, when it ends."""
        ...

    def cancel(self, handle: AttemptHandle, force: bool) -> None:
        """Stop an attempt: cooperatively, or at once when `force`."""
        ...

    def load(self, root: str, submission_id: str, node_id: str, outs: Sequence[str]) -> dict[str, Any]:
        """Refs to a finished node's persisted outputs, read back from the artifact store."""
        ...


class RunView(Protocol):
    """One live submission as the cache sees it."""

    @property
    def submission_id(self) -> str: ...

    @property
    def plan(self) -> ExecutionPlan: ...

    @property
    def machine(self) -> RunMachine: ...

    @property
    def team(self) -> str | None: ...  # the cache is per team (fabric/execute/cache.py)

    @property
    def runtime_env(self) -> dict[str, Any] | None: ...

    @property
    def code(self) -> dict[str, Any]: ...  # entrypoint -> ref of a notebook-defined function


class CacheHost(Protocol):
    """The few things `NodeCache` asks of the engine (called on the engine's loop thread, under its lock)."""

    def live_runs(self) -> Iterator[RunView]:
        """Every live submission (a snapshot: the cache may act on them while iterating)."""
        ...

    def run_of(self, submission_id: str) -> RunView | None: ...

    def perform(self, submission_id: str, actions: list[Action]) -> None:
        """Carry out a machine's actions (dispatch, kill) for this submission."""
        ...

    def adopt_outputs(self, submission_id: str, node_id: str, token: int, values: dict[str, Any]) -> None:
        """Make `values` (refs) the outputs of the node's dispatch `token`, as if it had run."""
        ...

    def load_outputs(self, submission_id: str, node_id: str, outs: Sequence[str]) -> dict[str, Any]:
        """Refs to a node's persisted outputs, read back from the artifact store by the backend."""
        ...

    def wake(self, submission_id: str) -> None:
        """Ask the loop to look at this submission again (from any thread)."""
        ...


__all__ = ["AttemptHandle", "Backend", "CacheHost", "Cancel", "Done", "RunView", "Message", "Outcome", "Start",
           "Stop", "Wake"]
