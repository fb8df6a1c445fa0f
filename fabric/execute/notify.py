"""Webhook delivery off the engine's thread: a Store wrapper hands recorded events to a Notifier, whose thread
turns them into notices (`fabric.record.notify`) and whose small pool sends them, retrying with backoff.

Every attempt is an audit row under `_notify:<submission>` (`EventKind.NOTIFY_*`). Before a message is sent its
delivery id is checked against those rows, and when a registry starts it replays recent runs' events and sends
only what the audit does not show delivered: one message per event across restarts (a crash between a 2xx and
its audit row is the one way a receiver sees a delivery id twice; it dedupes on X-Fabric-Delivery).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fabric.execute.webhook import Refused, post
from fabric.record import Event, Store, SubmissionRecord
from fabric.record.notify import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    History,
    Notice,
    NoticeTracker,
    RunNotify,
    audit_reason,
    delivery_history,
    retry_delay,
    run_notify,
    signature,
    worth_retrying,
)
from fabric.secrets import read_secret
from fabric.states import NOTIFY_SUBJECT, EventKind, is_admin_subject

log = logging.getLogger(__name__)

RECOVER_LIMIT = 500  # recent submissions a starting registry looks through for undelivered messages
RECOVER_WINDOW_S = 86_400.0  # an event older than this is not sent after a restart
Sender = Callable[[str, bytes, dict[str, str], bool], int]


class Notifier:
    """Consumes recorded events on its own thread; a slow or failing receiver is never felt by the engine."""

    def __init__(self, store: Store, secrets_dir: str | None, allow_private: bool = False, sender: Sender = post,
                 clock: Callable[[], float] = time.time, workers: int = 4,
                 delay: Callable[[int], float] = retry_delay) -> None:
        self._store, self._secrets, self._allow_private = store, secrets_dir, allow_private
        self._send, self._clock, self._delay = sender, clock, delay
        self._tracker = NoticeTracker()
        self._inbox: queue.SimpleQueue[list[Event] | None] = queue.SimpleQueue()
        self._due: list[tuple[float, int, int, Notice]] = []  # (when, tie, attempt, notice)
        self._tie = itertools.count()
        self._lock = threading.Lock()
        self._known: OrderedDict[str, None] = OrderedDict()  # delivery ids taken on: never taken twice
        self._quiet: OrderedDict[str, None] = OrderedDict()  # submissions without webhooks
        self._histories: OrderedDict[str, dict[str, History]] = OrderedDict()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fabric-notify-send")
        self._busy = 0
        self._idle = threading.Event()  # set by the loop once the recovery is done and nothing is left
        threading.Thread(target=self._loop, name="fabric-notify", daemon=True).start()

    def put(self, events: list[Event]) -> None:
        with self._lock:  # with the loop's idle check: it cannot miss this batch
            self._idle.clear()
            self._inbox.put(events)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is queued, due or being sent (tests)."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        try:
            self._recover()
        except Exception:  # noqa: BLE001 - a failed recovery must not stop live notices
            log.exception("fabric notify could not look for undelivered webhooks")
        while True:
            now = self._clock()
            wake = [t for t in (self._tracker.next_due(), self._due[0][0] if self._due else None) if t is not None]
            try:
                batch = self._inbox.get(timeout=min(max(min(wake) - now, 0.0), 1.0) if wake else 1.0)
                self._take(batch or [])
            except queue.Empty:
                pass
            except Exception:  # noqa: BLE001
                log.exception("fabric notify could not read recorded events")
            self._take_notices(self._tracker.tick(self._clock()))
            self._start_due()
            with self._lock:
                if self._inbox.empty() and not self._due and not self._busy:
                    self._idle.set()

    def _take(self, events: list[Event]) -> None:
        for event in events:
            sid = event.submission_id
            if is_admin_subject(sid) or sid in self._quiet or self._tracker.ended(sid):
                continue
            if not self._tracker.watching(sid) and not self._watch(sid):
                continue
            self._take_notices(self._tracker.feed(event))

    def _watch(self, submission_id: str) -> bool:
        record = self._store.get_submission(submission_id)
        notify = _notify_of(record) if record is not None else None
        if notify is None:
            self._quiet[submission_id] = None
            while len(self._quiet) > 10_000:
                self._quiet.popitem(last=False)
            return False
        self._tracker.watch(notify)
        return True

    def _recover(self) -> None:
        """Replay recent runs with webhooks: what their events mean and the audit does not show sent goes out."""
        self._store.flush()
        now = self._clock()
        records = {r.submission_id: r for r in self._store.list_submissions(limit=RECOVER_LIMIT)}
        records.update((r.submission_id, r) for r in self._store.non_terminal_submissions())
        for sid, record in records.items():
            if (record.state != "RUNNING" and record.created_at < now - 7 * RECOVER_WINDOW_S) \
                    or (notify := _notify_of(record)) is None:
                continue
            self._tracker.watch(notify)
            notices = [n for e in self._store.events(sid) for n in self._tracker.feed(e)]
            self._take_notices([n for n in notices if n.at >= now - RECOVER_WINDOW_S])  # older ones are no news

    def _take_notices(self, notices: list[Notice]) -> None:
        for notice in notices:
            if notice.delivery_id in self._known:
                continue
            self._known[notice.delivery_id] = None
            while len(self._known) > 100_000:
                self._known.popitem(last=False)
            done = self._history(notice.submission_id).get(notice.delivery_id)
            if done is None or not done.finished:
                self._schedule(self._clock(), (done.attempts if done else 0) + 1, notice)

    def _history(self, submission_id: str) -> dict[str, History]:
        """What the audit says was sent for this run (read once per run: after that, this registry knows)."""
        if submission_id not in self._histories:
            self._histories[submission_id] = delivery_history(self._store.events(NOTIFY_SUBJECT + submission_id))
            while len(self._histories) > 10_000:
                self._histories.popitem(last=False)
        return self._histories[submission_id]

    def _schedule(self, when: float, attempt: int, notice: Notice) -> None:
        with self._lock:
            heapq.heappush(self._due, (when, next(self._tie), attempt, notice))

    def _start_due(self) -> None:
        now = self._clock()
        with self._lock:
            while self._due and self._due[0][0] <= now:
                _, _, attempt, notice = heapq.heappop(self._due)
                self._busy += 1
                self._pool.submit(self._attempt, attempt, notice)

    def _attempt(self, attempt: int, notice: Notice) -> None:
        try:
            self._deliver(attempt, notice)
        except Exception:  # noqa: BLE001 - e.g. the store's lease was lost: the next registry delivers it
            log.exception("fabric notify: delivery %s failed", notice.delivery_id)
        finally:
            with self._lock:
                self._busy -= 1
            self._inbox.put(None)  # wake the loop: a retry may be due, or it is idle now

    def _deliver(self, attempt: int, notice: Notice) -> None:
        hook = notice.webhook
        status: int | None = None
        try:
            secret = read_secret(Path(self._secrets) if self._secrets else None, hook.scope, hook.key,
                                 (hook.scope,)).encode()
        except Exception as exc:  # noqa: BLE001 - a missing secret is the operator's to fix: not retried
            self._record(notice, attempt, EventKind.NOTIFY_GAVE_UP, error=f"no secret {hook.secret}: {exc}"[:300])
            return
        stamp = int(self._clock())
        headers = {SIGNATURE_HEADER: signature(secret, stamp, notice.body), TIMESTAMP_HEADER: str(stamp),
                   DELIVERY_HEADER: notice.delivery_id, EVENT_HEADER: str(notice.event)}
        try:
            status = self._send(hook.url, notice.body, headers, self._allow_private)
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except Refused as exc:
            self._record(notice, attempt, EventKind.NOTIFY_GAVE_UP, error=f"refused: {exc}"[:300])
            return
        except Exception as exc:  # noqa: BLE001 - the network: retried
            error = f"{type(exc).__name__}: {exc}"[:300]
        if not error:
            self._record(notice, attempt, EventKind.NOTIFY_DELIVERED, status=status)
        elif attempt < hook.max_attempts and worth_retrying(status):
            wait = self._delay(attempt)
            self._record(notice, attempt, EventKind.NOTIFY_RETRY, status=status, error=error, retry_in_s=wait)
            self._schedule(self._clock() + wait, attempt + 1, notice)
        else:
            self._record(notice, attempt, EventKind.NOTIFY_GAVE_UP, status=status, error=error)

    def _record(self, notice: Notice, attempt: int, outcome: EventKind, **facts: Any) -> None:
        self._store.append_events([Event(NOTIFY_SUBJECT + notice.submission_id, notice.node_id, str(notice.event),
                                         outcome, self._clock(), attempt, audit_reason(notice, **facts))])
        self._store.flush()  # delivered is durable at once: a restart must not send it again


def _notify_of(record: SubmissionRecord) -> RunNotify | None:
    try:
        return run_notify(record)
    except ValueError:  # validated at submit: only a record written by hand lands here
        log.exception("fabric notify: the notify section of %s does not parse", record.submission_id)
        return None


class NotifyingStore:
    """The registry's Store, unchanged, except that what it records is also handed to a Notifier."""

    def __init__(self, inner: Store, notifier: Notifier) -> None:
        self._inner = inner
        self.notifier = notifier

    def append_events(self, events: list[Event]) -> None:
        self._inner.append_events(events)
        self.notifier.put(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def notifying(store: Store, secrets_dir: str | None, allow_private: bool) -> Store:
    """`store`, wrapped so that recorded events reach the webhooks of the runs that asked for them."""
    return NotifyingStore(store, Notifier(store, secrets_dir, allow_private))
