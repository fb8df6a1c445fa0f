"""`fabric.context()`: what a running node knows about itself (ids, artifact dir, progress, cancel)."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric.errors import ErrorCode, FabricError

ProgressSink = Callable[[float, str], None]
CancelProbe = Callable[[], bool]


@dataclass
class NodeContext:
    """Handed to node code through `fabric.context()`; cheap to build, nothing happens until used.

    `progress` is rate-limited locally so a tight loop cannot flood the control plane; the last
    value always reaches the status when the node ends.
    """

    submission_id: str
    node_id: str
    attempt: int
    artifact_root: Path
    logger: logging.Logger
    progress_sink: ProgressSink | None = None
    cancel_probe: CancelProbe | None = None
    stop_probe: CancelProbe | None = None  # is this attempt being stopped (preempted, or cancelled)?
    preempt_handlers: list[Callable[[], None]] = field(default_factory=list)
    device: str = "cpu"  # "gpu" when it holds a GPU; GPU-first work that fell back to CPU sees "cpu"
    min_progress_interval_s: float = 0.5
    last_progress: tuple[float, str] | None = None
    _last_sent_at: float = 0.0
    _cancel_flag: threading.Event = field(default_factory=threading.Event)
    _cancel_checked_at: float = 0.0
    _watching: bool = False
    _handlers_ran: bool = False
    _handlers_lock: threading.Lock = field(default_factory=threading.Lock)
    _finished: threading.Event = field(default_factory=threading.Event)
    secrets_scope: tuple[str, ...] = ()  # the scopes this submission may read (runtime_params.secrets_scope)
    secrets_root: Path | None = None  # this node's own mount of scopes the head does not hold
    # What the head sent for this attempt (fabric/secrets.py): in memory only, never shown by repr.
    secret_values: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False)
    # Given the node's checkpoint storage path, a pyarrow filesystem that reaches it where this worker shares no
    # disk with the head's artifact root (None, or an answer of None: the path is reachable as it is).
    checkpoint_fs: Callable[[str], Any] | None = None
    # An exit hook's (`on_exit`): the run's state before its hooks and every other node's (None for other nodes).
    run_outcome: Mapping[str, Any] | None = None

    @property
    def artifact_dir(self) -> Path:
        """This node's own directory for files it writes; made on first use so idle nodes cost nothing."""
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        return self.artifact_root

    def secret(self, key: str, scope: str) -> str:
        """A secret's value: as the head delivered it for this attempt, else from this node's own mount (see
        fabric/secrets.py). Only scopes the submission listed in `runtime_params.secrets_scope` can be read."""
        from fabric.secrets import read_secret

        return read_secret(self.secrets_root, scope, key, self.secrets_scope, self.secret_values)

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress in [0, 1] with an optional message."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        self.last_progress = (fraction, message)
        now = time.monotonic()
        if self.progress_sink is not None and (now - self._last_sent_at >= self.min_progress_interval_s
                                               or fraction >= 1.0):
            self._last_sent_at = now
            self.progress_sink(fraction, message)

    @property
    def cancelled(self) -> bool:
        """True once the submission was cancelled; cheap: the probe runs at most once a second."""
        if self._cancel_flag.is_set():
            return True
        now = time.monotonic()
        if self.cancel_probe is not None and now - self._cancel_checked_at >= 1.0:
            self._cancel_checked_at = now
            if self.cancel_probe():
                self._cancel_flag.set()
        return self._cancel_flag.is_set()

    def on_preempt(self, handler: Callable[[], None]) -> None:
        """Register a callback run when this attempt is being stopped (preempted or cancelled), before it
        is killed: e.g. to write a checkpoint. It runs in a watcher thread, within the grace period
        (3 s) the fabric gives an attempt before it kills it."""
        self.preempt_handlers.append(handler)
        if self.stop_probe is not None and not self._watching:
            self._watching = True
            threading.Thread(target=self._watch, name="fabric-preempt-watch", daemon=True).start()

    def run_preempt_handlers(self) -> None:
        """Run the registered handlers once (later calls do nothing)."""
        with self._handlers_lock:  # the interrupt path waits for handlers the watcher has begun
            if self._handlers_ran:
                return
            self._handlers_ran = True
            for handler in self.preempt_handlers:
                try:
                    handler()
                except Exception:  # noqa: BLE001 - a failing checkpoint must not stop the others
                    self.logger.exception("an on_preempt handler failed")

    def finish(self) -> None:
        """The attempt is over: the watcher stops (a reused worker keeps no thread of it)."""
        self._finished.set()

    def _watch(self, interval_s: float = 0.5) -> None:
        while not self._finished.wait(interval_s):
            if self.stop_probe is not None and self.stop_probe():
                self.run_preempt_handlers()
                return


_current: contextvars.ContextVar[NodeContext | None] = contextvars.ContextVar("fabric_node_context",
                                                                             default=None)


def context() -> NodeContext:
    """The context of the node running in this process; raises outside a node."""
    ctx = _current.get()
    if ctx is None:
        raise FabricError(
            "fabric.context() was called outside a running node",
            code=ErrorCode.NO_CONTEXT,
            fix="call it from inside a node's function, or wrap a local test in fabric.local_context()",
        )
    return ctx


@contextmanager
def use_context(ctx: NodeContext) -> Iterator[NodeContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


@contextmanager
def local_context(artifact_dir: str | Path, *, submission_id: str = "local", node_id: str = "local",
                  attempt: int = 1) -> Iterator[NodeContext]:
    """A context for calling node functions directly, e.g. in unit tests or a notebook cell."""
    path = Path(artifact_dir)
    path.mkdir(parents=True, exist_ok=True)
    ctx = NodeContext(submission_id=submission_id, node_id=node_id, attempt=attempt, artifact_root=path,
                      logger=logging.getLogger(f"fabric.node.{node_id}"))
    with use_context(ctx):
        yield ctx
