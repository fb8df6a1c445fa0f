"""Submissions share commits: the store's group commit, and the registry's gate that lets submits overlap."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fabric.actors.submit_gate import SubmitGate
from fabric.errors import ErrorCode, FabricError
from fabric.record import SqliteStore, SubmissionRecord

pytestmark = pytest.mark.timeout(60)


def rec(sid: str) -> SubmissionRecord:
    return SubmissionRecord(submission_id=sid, pipeline_id="pipe", spec={"nodes": []}, runtime_params={},
                            plan_hash="p", request_hash=f"r-{sid}", created_at=time.time(), team="a")


class HeldStore(SqliteStore):
    """Records each transaction's batch; the first one waits until `release` is set, holding the connection,
    and the first transaction whose batch holds `fail_with` fails."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.fail_with: str | None = None

    def _insert_submissions(self, records: list[SubmissionRecord]) -> None:
        ids = [r.submission_id for r in records]
        self.batches.append(ids)
        if len(self.batches) == 1:
            assert self.release.wait(20)
        if self.fail_with in ids:
            self.fail_with = None
            raise FabricError("disk gone", code=ErrorCode.STORE_UNAVAILABLE, where="store", fix="-")
        super()._insert_submissions(records)


def _add_all(store: HeldStore, ids: list[str]) -> dict[str, BaseException | None]:
    """Adds the first id, then the rest while the first's transaction holds the connection."""
    outcome: dict[str, BaseException | None] = {}

    def add(sid: str) -> None:
        try:
            store.add_submission(rec(sid))
            outcome[sid] = None
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to check
            outcome[sid] = exc

    threads = [threading.Thread(target=add, args=(ids[0],))]
    threads[0].start()
    while not store.batches:
        time.sleep(0.005)
    threads += [threading.Thread(target=add, args=(sid,)) for sid in ids[1:]]
    for thread in threads[1:]:
        thread.start()
    while len(store._new_submissions) < len(ids):  # all of them queued behind the first's transaction
        time.sleep(0.005)
    store.release.set()
    for thread in threads:
        thread.join(20)
    return outcome


def test_submissions_that_arrive_during_a_commit_are_written_together_and_all_are_durable(tmp_path: Path) -> None:
    ids = [f"a:s{i}" for i in range(8)]
    store = HeldStore(tmp_path / "g.db")
    outcome = _add_all(store, ids)
    assert outcome == dict.fromkeys(ids)
    assert store.batches[0] == ["a:s0"]
    assert len(store.batches) == 2 and sorted(store.batches[1]) == ids[1:]  # seven submits, one transaction
    store.close()
    with SqliteStore(tmp_path / "g.db") as again:
        assert all(again.get_submission(sid) is not None for sid in ids)


def test_a_failed_group_commit_fails_only_its_caller_and_the_others_are_written_by_their_own(tmp_path: Path) -> None:
    ids = [f"a:s{i}" for i in range(6)]
    store = HeldStore(tmp_path / "f.db")
    store.fail_with = "a:s3"  # whichever caller writes the batch holding s3 fails, once: then s3 is taken back
    outcome = _add_all(store, ids)
    failed = [sid for sid, error in outcome.items() if error is not None]
    assert len(failed) == 1 and isinstance(outcome[failed[0]], FabricError)
    store.close()
    with SqliteStore(tmp_path / "f.db") as again:
        stored = {sid for sid in ids if again.get_submission(sid) is not None}
    assert stored == set(ids) - set(failed)  # the failed caller's record is not stored: its 503 loses nothing
    if failed[0] != "a:s3":
        assert "a:s3" in stored  # s3 was in the failed batch, and its own caller wrote it after


def test_the_gate_runs_one_start_per_key_at_a_time_and_different_keys_at_once() -> None:
    gate = SubmitGate()
    inside: list[str] = []
    most = [0]
    lock = threading.Lock()

    def start(team: str, key: str) -> None:
        with gate.starting(team, key):
            with lock:
                inside.append(key)
                most[0] = max(most[0], len(inside))
            time.sleep(0.05)
            with lock:
                inside.remove(key)

    same = [threading.Thread(target=start, args=("a", k)) for k in ("k", "a:k", "k")]  # one id: `a:k`
    for thread in same:
        thread.start()
    for thread in same:
        thread.join(10)
    assert most[0] == 1
    different = [threading.Thread(target=start, args=("a", f"k{i}")) for i in range(4)]
    for thread in different:
        thread.start()
    for thread in different:
        thread.join(10)
    assert most[0] == 4


def test_the_kill_switch_waits_for_starts_under_way_and_holds_new_ones_back() -> None:
    gate = SubmitGate()
    events: list[str] = []
    started = threading.Event()

    def slow_start() -> None:
        with gate.starting("a", "k1"):
            started.set()
            time.sleep(0.2)
            events.append("start k1 done")

    def switch() -> None:
        with gate.switching():
            events.append("switched")
            time.sleep(0.2)
        events.append("switch done")

    def later_start() -> None:
        with gate.starting("a", "k2"):
            events.append("start k2")

    first = threading.Thread(target=slow_start)
    first.start()
    assert started.wait(5)
    switcher = threading.Thread(target=switch)
    switcher.start()
    time.sleep(0.05)
    later = threading.Thread(target=later_start)
    later.start()
    for thread in (first, switcher, later):
        thread.join(10)
    assert events == ["start k1 done", "switched", "switch done", "start k2"]
