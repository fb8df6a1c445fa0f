"""A fused chain, or a pack of map children, inside one Ray worker: its members run one after another, each its
own attempt (plan/fuse.py)."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fabric.execute.outputs import encode_outputs
from fabric.execute.packs import pack_bytes, pack_name
from fabric.execute.sink import HeadLink
from fabric.execute.untrusted import encode_chain_items, encode_outcomes
from fabric.execute.worker import NodeFailure, NotRun, attempt_node, registry_handle
from fabric.kinds import NodeCall
from fabric.spec.mapping import parent_of
from fabric.types import AttemptReport, ErrorInfo

EXTERNAL = -1  # a source (EXTERNAL, i): the task's i-th input; (j, s): slot s of member j's values

MemberOutcome = tuple[AttemptReport, ErrorInfo | None]


@dataclass(frozen=True)
class ChainCall:
    """The members of one fused task, in run order, and where each member's inputs come from."""

    members: tuple[NodeCall, ...]
    sources: tuple[tuple[tuple[int, int], ...], ...]  # per member, per input (a notebook function's blob first)
    independent: bool = False  # a pack of map children (plan/fuse.py packable): a failure stops no other member

    @property
    def slots(self) -> int:
        return sum(len(call.result_slots) for call in self.members)


REPORT_EVERY_S = 0.05  # members' successes go to the registry in batches, at most this often (and at the end)

Reporter = Callable[[list[tuple[str, int, MemberOutcome]]], None]  # [(node id, attempt, outcome)]


def run_pickled_chain(chain: bytes, sealed: bytes, *inputs: Any) -> tuple[Any, ...]:
    """The Ray task body of a fused chain: (the outcomes, one per member, as plain data, then every member's values).

    It never raises for a member's failure: the members before it succeeded and their values must reach their
    consumers (a retry of the failed member reads them). The failed member's values, and those of every member
    after it, are `NotRun` markers: whatever reads them fails at once, as it would on an error from Ray."""
    call: ChainCall = pickle.loads(chain)
    if sealed:  # the secret values the head read for this task, beside the call (as in run_pickled_node)
        values = pickle.loads(sealed)
        call = replace(call, members=tuple(replace(member, secret_values=values) for member in call.members))
    outcomes, values = run_chain(call, inputs, _reporter(call.members[0]))
    return (encode_outcomes(outcomes), *values)


def run_chain(chain: ChainCall, inputs: Sequence[Any], report: Reporter | None = None
              ) -> tuple[list[MemberOutcome], list[Any]]:
    """Run the members in order; `report` gets each success while the task runs (the status shows members
    finish one by one, and a registry that restarts meanwhile finds them SUCCEEDED in its record)."""
    produced: list[list[Any]] = []
    # A pack file is found again only for a map's children (packs.py looks among the map's own).
    packer = _Packer(chain.members[0]) if chain.independent and any(m.persist for m in chain.members) and all(
        parent_of(m.node_id) is not None for m in chain.members) else None
    batch = _Batch(_written_first(report, packer)) if report is not None else None
    outcomes: list[MemberOutcome] = []
    failed: str | None = None
    for member, sources in zip(chain.members, chain.sources, strict=True):
        if failed is not None:
            reason = f"member {failed} of its fused task failed"
            outcomes.append((AttemptReport(), ErrorInfo("NotRun", reason)))
            produced.append([NotRun(member.node_id, reason)] * len(member.result_slots))
            continue
        args = [inputs[i] if j == EXTERNAL else produced[j][i] for j, i in sources]
        try:
            report_, values = attempt_node(member, *args, persist_with=packer.keep if packer else None)
        except NodeFailure as exc:
            failed = None if chain.independent else member.node_id
            outcomes.append((exc.report, exc.error))
            produced.append([NotRun(member.node_id, f"{exc.error.type}: {exc.error.message}"[:300])]
                            * len(member.result_slots))
            continue
        outcomes.append((report_, None))
        produced.append(values)
        if batch is not None and member is not chain.members[-1]:  # the last one is in the return value
            batch.add((member.node_id, member.attempt, (report_, None)))
    if batch is not None:
        batch.close()
    if packer is not None:  # what no report carried yet: durable before the task returns its outcomes
        packer.write()
        for k, member in enumerate(chain.members):
            error = packer.failed.get(member.node_id)
            if error is not None and outcomes[k][1] is None:
                outcomes[k] = (outcomes[k][0], error)
                produced[k] = [NotRun(member.node_id, error.message[:300])] * len(member.result_slots)
    return outcomes, [value for values in produced for value in values]


class _Packer:
    """A pack's outputs, kept until its next report and then written as one file (fabric/execute/packs.py): a
    success is reported only once its outputs are on record, as a child alone does."""

    def __init__(self, head: NodeCall) -> None:
        self._head = head
        self._link: HeadLink | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[NodeCall, dict[str, Any]]] = []
        self.failed: dict[str, ErrorInfo] = {}  # members whose outputs could not be written: they failed

    def keep(self, call: NodeCall, values: dict[str, Any]) -> None:
        with self._lock:
            self._pending.append((call, values))

    def write(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        blobs: list[tuple[str, bytes]] = []
        for call, values in pending:
            try:
                files = encode_outputs(values)
                if len(files) > 1:  # a table has its own Arrow file: that child persists alone, as ever
                    HeadLink(call).persist_outputs(values)
                else:
                    blobs.append((call.node_id, files[0][1]))
            except Exception as exc:  # noqa: BLE001 - as in attempt_node: that member fails, the others go on
                self.failed[call.node_id] = _not_persisted(exc)
        if not blobs:
            return
        try:
            if self._link is None:
                self._link = HeadLink(self._head)
            self._link.persist_pack(pack_name(), pack_bytes(blobs))
        except Exception as exc:  # noqa: BLE001 - every member of this pack failed to keep its outputs
            self.failed.update((child, _not_persisted(exc)) for child, _ in blobs)


def _not_persisted(exc: Exception) -> ErrorInfo:
    return ErrorInfo(type(exc).__name__, f"its outputs could not be persisted: {exc}")


def _written_first(report: Reporter, packer: _Packer | None) -> Reporter:
    """`report`, once the pack's outputs so far are written; a member whose outputs were not is left out."""
    if packer is None:
        return report

    def send(items: list[tuple[str, int, MemberOutcome]]) -> None:
        packer.write()
        kept = [item for item in items if item[0] not in packer.failed]
        if kept:
            report(kept)
    return send


class _Batch:
    """Successes go out at once when none went out in the last REPORT_EVERY_S, else together at its end (a
    timer): a slow member's predecessor shows SUCCEEDED at once, a run of fast ones costs a few calls."""

    def __init__(self, send: Reporter) -> None:
        self._send, self._lock = send, threading.Lock()
        self._pending: list[tuple[str, int, MemberOutcome]] = []
        self._sent_at = -REPORT_EVERY_S
        self._timer: threading.Timer | None = None

    def add(self, item: tuple[str, int, MemberOutcome]) -> None:
        with self._lock:
            self._pending.append(item)
            wait = self._sent_at + REPORT_EVERY_S - time.monotonic()
            if wait <= 0:
                self._flush_locked()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._timer = None
        if self._pending:
            self._send(self._pending)
            self._pending, self._sent_at = [], time.monotonic()

    def close(self) -> None:  # what is still pending goes in the task's return value
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._pending = None, []


def _reporter(call: NodeCall) -> Reporter | None:
    """Fire and forget to the registry; the task's own return value carries every outcome anyway."""
    if call.control is None:
        return None
    registry = registry_handle(*call.control)

    def send(items: list[tuple[str, int, MemberOutcome]]) -> None:
        try:
            # Signed by the chain head's attempt grant (fabric/capability.py): only this task reports for its chain.
            registry.chain_report.remote(call.submission_id, call.node_id, call.attempt, call.grant,
                                         encode_chain_items(items))
        except Exception:  # noqa: BLE001 - a lost report only delays the status until the task returns
            pass
    return send
