"""What runs inside a Ray worker for one node attempt: context, log capture, the kind, the outputs."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from fabric.context import NodeContext, use_context
from fabric.digests import output_digests
from fabric.execute.conditions import Skipped, gate
from fabric.execute.localpath import local_file_outputs, local_path_warning
from fabric.execute.logcapture import TAIL_BYTES, CaptureStream, LogCapture
from fabric.execute.sink import HeadLink
from fabric.execute.untrusted import encode_report
from fabric.kinds import NodeCall, get_kind
from fabric.secrets import secrets_root
from fabric.spec.expr import ConditionError
from fabric.types import AttemptReport, ErrorInfo

LOG_TAIL_CHARS = TAIL_BYTES
Persister = Callable[[NodeCall, dict[str, Any]], None]  # (the attempt's call, the outputs it keeps)
TRACEBACK_LINES = 30

_capture: ContextVar[CaptureStream | None] = ContextVar("fabric_log_capture", default=None)


class NodeFailure(Exception):
    """Raised out of a worker when a node's code failed: carries what the status needs."""

    def __init__(self, node_id: str, attempt: int, error: ErrorInfo, report: AttemptReport) -> None:
        super().__init__(f"node {node_id} attempt {attempt}: {error.type}: {error.message}")
        self.node_id, self.attempt, self.error, self.report = node_id, attempt, error, report

    def __reduce__(self) -> tuple[Any, ...]:
        return (NodeFailure, (self.node_id, self.attempt, self.error, self.report))


class NotRun:
    """The value of an out a fused task never produced (its member failed, or one before it did): a node that
    gets it as an input fails at once, as Ray fails a task whose input is an error, without running its code."""

    def __init__(self, node_id: str, reason: str) -> None:
        self.node_id, self.reason = node_id, reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (NotRun, (self.node_id, self.reason))


class _CaptureHandler(logging.Handler):
    """Routes `fabric.context().logger` records to the log of the node running in this thread."""

    def emit(self, record: logging.LogRecord) -> None:
        buffer = _capture.get()
        if buffer is not None:
            buffer.write(self.format(record) + "\n")


def _node_logger() -> logging.Logger:
    logger = logging.getLogger("fabric.node")
    if not any(isinstance(h, _CaptureHandler) for h in logger.handlers):
        handler = _CaptureHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def node_dir(home: str, submission_id: str, node_id: str) -> Path:
    return Path(home) / "runs" / submission_id / node_id


def remove_scratch(node_root: Path) -> None:
    """A node's scratch directory, and its submission's when no other node of it still uses this disk."""
    shutil.rmtree(node_root, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: another node of the submission is here
        node_root.parent.rmdir()


def run_pickled_node(call: bytes, sealed: bytes, *inputs: Any) -> tuple[Any, ...]:
    """The Ray task body; the NodeCall arrives pickled (see RayBackend.submit), and the secret values the head
    read for this attempt beside it (`sealed`, empty when none): they live in this process's memory only."""
    node_call = pickle.loads(call)
    if sealed:
        node_call = replace(node_call, secret_values=pickle.loads(sealed))
    return run_node(node_call, *inputs)


def run_node(call: NodeCall, *inputs: Any) -> tuple[Any, ...]:
    """The Ray task body: returns (AttemptReport, *values), one value per result slot."""
    report, values = attempt_node(call, *inputs)
    # The report travels as msgpack of plain fields: the registry never unpickles what a worker made
    # (execute/untrusted.py), and Ray's generic path for a dataclass costs far more than bytes.
    return (encode_report(report), *values)


def attempt_node(call: NodeCall, *inputs: Any, persist_with: Persister | None = None
                 ) -> tuple[AttemptReport, list[Any]]:
    """One attempt of one node, in this process: its report and one value per result slot; NodeFailure if it
    failed. `persist_with` takes the outputs to persist instead of this attempt (a pack of map children writes
    them together, before it reports their successes: fabric/execute/packs.py)."""
    started = time.time()
    for value in inputs:
        if isinstance(value, NotRun):  # an upstream member of a fused task failed: this one is withdrawn
            error = ErrorInfo("NotRun", f"input from {value.node_id} was not produced: {value.reason}")
            raise NodeFailure(call.node_id, call.attempt, error, AttemptReport(started_at=started,
                                                                               ended_at=time.time()))
    blob, args = (inputs[0], inputs[1:]) if call.inline_code else (None, inputs)
    try:
        named, skipped = gate(call, args)
    except ConditionError as exc:  # the values have the wrong type or shape for the condition: the node fails
        error = ErrorInfo("ConditionError", f"when {call.when!r}: {exc}")
        raise NodeFailure(call.node_id, call.attempt, error, AttemptReport(started_at=started,
                                                                           ended_at=time.time())) from None
    if skipped:  # its code never runs: each out is a Skipped marker, which its consumers read as absent
        return (AttemptReport(started_at=started, ended_at=time.time(), skipped=skipped),
                [Skipped(call.node_id)] * len(call.result_slots))
    # The worker's disk is scratch: the log, the node's files and the resume outputs go to the head (or the
    # artifact store) through this link; the log live, in chunks, with fds 1 and 2 captured.
    link = HeadLink(call)
    capture = LogCapture(link.ship_log)
    buffer = CaptureStream(capture)
    capture_token = _capture.set(buffer)
    ctx = NodeContext(submission_id=call.submission_id, node_id=call.node_id, attempt=call.attempt,
                      artifact_root=node_dir(call.home, call.submission_id, call.node_id),
                      logger=_node_logger(), progress_sink=_progress_sink(call),
                      cancel_probe=_cancel_probe(call), stop_probe=_stop_probe(call),
                      secrets_scope=call.secrets, secrets_root=secrets_root(call.home),
                      secret_values=call.secret_values, checkpoint_fs=link.checkpoint_fs, run_outcome=call.run_outcome,
                      device=call.device or ("gpu" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu"))
    # One task at a time runs in a Ray worker process, so swapping the process's streams is safe.
    saved_streams = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = buffer
    capture.start()
    digests: dict[str, str] | None = None
    try:
        with use_context(ctx):
            def run(kwargs: dict[str, Any]) -> Any:
                if blob is not None:
                    return _inline_function(blob)(**call.params, **kwargs)
                return get_kind(call.kind).run(call, kwargs)
            if call.batch_over:  # a map child with a batch of items: once per item, one list per out
                rows = [split_outputs(call, run({**named, call.batch_over: item})) for item in named[call.batch_over]]
                values = [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in call.result_slots]
            else:
                values = split_outputs(call, run(named))
            for slot, path in local_file_outputs(call.result_slots, values):
                ctx.logger.warning(local_path_warning(call.node_id, slot, path))
            if call.digest:  # a cache key reads them: what the data is, not what it is called
                digests = output_digests(call.result_slots, values)
            if call.persist:
                # Durable before the node reports success: a resumed run reloads instead of recomputing.
                by_slot = dict(zip(call.result_slots, values, strict=True))
                kept = {name: by_slot[name] for name in call.persist}
                if persist_with is not None:
                    persist_with(call, kept)
                else:
                    link.persist_outputs(kept)
    except KeyboardInterrupt:  # an interrupt from Ray's cancel: let the node checkpoint first
        ctx.run_preempt_handlers()
        raise
    except Exception as exc:  # noqa: BLE001 - every failure of user code becomes a NodeFailure
        report = _report(call, capture, link, ctx, started)
        tb = "".join(traceback.format_exception(exc)).splitlines()[-TRACEBACK_LINES:]
        error = ErrorInfo(type(exc).__name__, str(exc), "\n".join(tb))
        raise NodeFailure(call.node_id, call.attempt, error, report) from None
    finally:
        ctx.finish()
        if call.artifacts and ctx.artifact_root.is_dir():  # the node's files, into the artifact store
            link.publish_files(ctx.artifact_root)
        if link.remote:  # off the head this disk is scratch, and what mattered of it went to the head above
            remove_scratch(ctx.artifact_root)
        sys.stdout, sys.stderr = saved_streams
        capture.stop()
        link.wait_logs()
        _capture.reset(capture_token)
    return _report(call, capture, link, ctx, started, digests), values


@lru_cache(maxsize=64)
def _inline_function(blob: bytes) -> Callable[..., Any]:
    from ray import cloudpickle

    return cloudpickle.loads(blob)


def split_outputs(call: NodeCall, value: Any) -> list[Any]:
    slots = call.result_slots
    if len(slots) == 1:
        return [value]
    if not isinstance(value, Mapping):
        raise TypeError(f"node declares outs {list(slots)} and must return a dict with those keys, "
                        f"not a {type(value).__name__}")
    missing = [s for s in slots if s not in value]
    extra = [k for k in value if k not in slots]
    if missing or extra:
        raise ValueError(f"returned keys {sorted(value)} do not match declared outs {list(slots)}"
                       + (f"; missing {missing}" if missing else "") + (f"; undeclared {extra}" if extra else ""))
    return [value[s] for s in slots]


def _report(call: NodeCall, capture: LogCapture, link: HeadLink, ctx: NodeContext, started: float,
            digests: dict[str, str] | None = None) -> AttemptReport:
    # The tail rides in the report (the store keeps it); the whole log is the head's file at `log_path`.
    tail = capture.tail()
    log_path = link.log_path() if capture.total else None
    fraction, message = ctx.last_progress or (None, "")
    return AttemptReport(started_at=started, ended_at=time.time(), log_tail=tail, log_path=log_path,
                         progress=fraction, message=message, digests=digests)


def _registry(call: NodeCall) -> Any:
    assert call.control is not None
    return registry_handle(*call.control)


@lru_cache(maxsize=4)
def registry_handle(name: str, namespace: str) -> Any:
    # A named actor's handle stays valid across its restarts, so one lookup per worker process does.
    import ray

    return ray.get_actor(name, namespace=namespace)


def _progress_sink(call: NodeCall) -> Any:
    if call.control is None:
        return None

    def send(fraction: float, message: str) -> None:
        # Fire and forget: progress must never slow the node down or fail it.
        try:
            # Plain float and str: the registry unpickles no other type (a numpy float would be refused).
            _registry(call).report_progress.remote(call.submission_id, call.node_id, call.attempt, call.grant,
                                                   float(fraction), str(message))
        except Exception:  # noqa: BLE001
            pass

    return send


def _stop_probe(call: NodeCall) -> Any:
    if call.control is None:
        return None

    def probe() -> bool:
        import ray

        try:
            stopping = _registry(call).is_stopping.remote(call.submission_id, call.node_id, call.attempt, call.grant)
            return bool(ray.get(stopping, timeout=5))
        except Exception:  # noqa: BLE001
            return False

    return probe


def _cancel_probe(call: NodeCall) -> Any:
    if call.control is None:
        return None

    def probe() -> bool:
        import ray

        try:
            cancelled = _registry(call).is_cancelled.remote(call.submission_id, call.node_id, call.attempt, call.grant)
            return bool(ray.get(cancelled, timeout=5))
        except Exception:  # noqa: BLE001
            return False

    return probe
