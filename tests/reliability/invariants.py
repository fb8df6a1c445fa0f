"""The invariants every fault and load test ends with, read from the real SQLite store and marker files.

1. Nothing lost: every acknowledged submission is in the store and reached exactly one terminal state.
2. No duplicates: one submission per idempotency key, at most `max_attempts` executions per node
   (counted from side-effect markers, not from what the store claims).
3. No team above its quota at any sampling tick (samples of /api/orch/quotas or `Client.queues()`),
   and, independently of whoever holds the ledger, never above it in the audit log's own timeline.
4. The audit log replays to the final state the store holds.
5. A canary secret appears nowhere: logs, API answers, job info, audit, metrics, the store's bytes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric.record import SqliteStore
from fabric.record.replay import status_from_events

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}


def _rows(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def executions(marker_dir: Path) -> Counter[tuple[str, str]]:
    """How many times each (submission, node) actually ran, from `mark()`'s files."""
    counts: Counter[tuple[str, str]] = Counter()
    for path in Path(marker_dir).glob("*~*~*~*"):
        submission_id, node_id, *_ = path.name.split("~")
        counts[(submission_id, node_id)] += 1
    return counts


def check_nothing_lost(db: Path, acknowledged: Iterable[str]) -> dict[str, int]:
    acked = set(acknowledged)
    states = dict(_rows(db, "SELECT submission_id, state FROM submissions"))
    missing = sorted(acked - states.keys())
    assert not missing, f"acknowledged but not in the store: {missing[:10]} ({len(missing)} in all)"
    unfinished = sorted(s for s in acked if states[s] not in TERMINAL)
    assert not unfinished, f"acknowledged but not terminal: {[(s, states[s]) for s in unfinished[:10]]}"
    ends = Counter(sid for (sid,) in _rows(
        db, "SELECT submission_id FROM events WHERE node_id IS NULL AND target IN "
            "('SUCCEEDED','FAILED','TIMED_OUT','CANCELLED')"))
    twice = {s: ends[s] for s in acked if ends[s] != 1}
    assert not twice, f"submissions without exactly one terminal event: {dict(list(twice.items())[:10])}"
    return {"acknowledged": len(acked), "terminal": len(acked), "lost": 0,
            **{f"state_{k}": v for k, v in Counter(states[s] for s in acked).items()}}


def check_no_duplicates(db: Path, keys: Iterable[str], marker_dir: Path | None,
                        max_attempts: Callable[[str, str], int] | int, label: tuple[str, str] | None = None
                        ) -> dict[str, int]:
    """One submission per key (and, with `label`, no submission under that label beyond the keys);
    at most max_attempts executions of each node."""
    keys = set(keys)
    found = {sid for (sid,) in _rows(db, "SELECT submission_id FROM submissions")}
    assert keys <= found
    if label is not None:
        import json

        labelled = {sid for sid, labels in _rows(db, "SELECT submission_id, labels FROM submissions")
                    if json.loads(labels).get(label[0]) == label[1]}
        extra = labelled - keys
        assert not extra, f"{len(extra)} submissions under {label} that no client asked for: {sorted(extra)[:5]}"
    worst = 0
    counted = 0
    if marker_dir is not None:
        for (sid, node_id), count in executions(marker_dir).items():
            if sid not in keys:
                continue
            limit = max_attempts if isinstance(max_attempts, int) else max_attempts(sid, node_id)
            assert count <= limit, f"{sid}.{node_id} ran {count} times, over max_attempts={limit}"
            worst, counted = max(worst, count), counted + count
    return {"keys": len(keys), "submissions_per_key": 1, "executions": counted, "max_executions_per_node": worst}


def check_audit_replays(db: Path, submission_ids: Iterable[str]) -> dict[str, int]:
    """The events alone rebuild the state the store holds, node by node (what a restarted registry does)."""
    checked = 0
    with SqliteStore(db, read_only=True) as store:
        for sid in submission_ids:
            record = store.get_submission(sid)
            assert record is not None, sid
            replayed = status_from_events(record, store.events(sid))
            assert str(replayed.state) == record.state, f"{sid}: events say {replayed.state}, store {record.state}"
            for node in replayed.nodes:
                assert node.state.terminal, f"{sid}.{node.node_id} replays as {node.state}"
            checked += 1
    return {"replayed": checked, "mismatches": 0}


def quota_peaks_from_events(db: Path, submission_ids: Iterable[str]) -> dict[str, float]:
    """Per team, the most GPUs its RUNNING nodes held at once, from the audit timeline alone."""
    import json

    wanted = set(submission_ids)
    gpus: dict[tuple[str, str], float] = {}
    teams: dict[str, str] = {}
    for sid, spec, team in _rows(db, "SELECT submission_id, spec, team FROM submissions"):
        if sid in wanted:
            teams[sid] = team or ""
            for node in json.loads(spec).get("nodes", []):
                gpus[(sid, node["id"])] = float((node.get("resources") or {}).get("gpu", 0) or 0)
    timeline = []
    for sid, node_id, source, target, at in _rows(
            db, "SELECT submission_id, node_id, source, target, at FROM events WHERE node_id IS NOT NULL ORDER BY id"):
        if sid in wanted:
            if target == "RUNNING":
                timeline.append((at, 1, sid, node_id))
            elif source == "RUNNING":
                timeline.append((at, -1, sid, node_id))
    held: dict[str, float] = defaultdict(float)
    peaks: dict[str, float] = defaultdict(float)
    # Ends before starts at the same instant: a slot freed and taken in one round is not a double booking.
    for _, delta, sid, node_id in sorted(timeline, key=lambda t: (t[0], t[1])):
        team = teams[sid]
        held[team] += delta * gpus[(sid, node_id)]
        peaks[team] = max(peaks[team], held[team])
    return dict(peaks)


@dataclass
class QuotaSampler:
    """Samples the quotas view every `interval_s` in a thread; `check()` asserts no tick over budget."""

    fetch: Callable[[], list[dict[str, Any]]]  # -> [{"team", "gpu_in_use", "gpu_budget", ...}]
    interval_s: float = 0.1
    samples: list[tuple[float, str, float, float]] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> QuotaSampler:
        self._thread = threading.Thread(target=self._run, name="quota-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for quota in self.fetch():
                    budget = quota.get("gpu_budget")
                    if budget is not None:
                        self.samples.append((time.time(), quota["team"], float(quota["gpu_in_use"]), float(budget)))
            except Exception:  # noqa: BLE001 - the registry may be down mid-fault: that tick has no sample
                self.errors += 1
            self._stop.wait(self.interval_s)

    def check(self) -> dict[str, Any]:
        over = [s for s in self.samples if s[2] > s[3] + 1e-9]
        assert not over, f"over quota at {len(over)} ticks, e.g. {over[:3]}"
        return {"ticks": len(self.samples), "ticks_over_quota": 0, "ticks_unanswered": self.errors,
                "peak_in_use": max((s[2] for s in self.samples), default=0.0)}


def check_canary_absent(canary: str, texts: dict[str, str], files: Iterable[Path] = ()) -> dict[str, int]:
    """The canary appears in none of the given answers/texts, nor in the bytes of the given files."""
    leaks = [where for where, text in texts.items() if canary in text]
    needle = canary.encode()
    scanned = 0
    for path in files:
        for file in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
            try:
                data = file.read_bytes()
            except OSError:
                continue
            scanned += 1
            if needle in data:
                leaks.append(str(file))
    assert not leaks, f"the canary secret leaked into: {leaks}"
    return {"places_checked": len(texts), "files_scanned": scanned, "leaks": 0}
