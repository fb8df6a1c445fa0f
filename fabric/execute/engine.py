"""The engine: drives every live submission's RunMachine, turning its actions into Ray work.

One loop thread owns all decisions; Ray completion callbacks only enqueue (submission, node, token)."""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import ray

from fabric.errors import ErrorCode, NotFoundError
from fabric.execute.cache import NodeCache
from fabric.execute.dispatcher import Dispatcher
from fabric.execute.finished import Finished, bound_finished, finished_result, kept_summary, live_result, status_of
from fabric.execute.headsink import full_logs
from fabric.execute.live import EngineCacheHost, LiveRun, finished_run, held_team, in_flight
from fabric.execute.mapping import MapTasks
from fabric.execute.metrics import ray_metrics
from fabric.execute.outputs import start_report
from fabric.execute.ports import AttemptHandle, Backend, Cancel, Done, Message, Outcome, Start, Stop, Wake
from fabric.execute.resume import Reruns
from fabric.execute.scheduler import cost_events
from fabric.execute.untrusted import decode_chain_items
from fabric.plan import ExecutionPlan
from fabric.record import Event, Store, SubmissionRecord, SubmissionStatus
from fabric.record.cache import CacheIndex
from fabric.record.metrics import FabricMetrics
from fabric.schedule import Action, Kill, RunMachine
from fabric.schedule.admission import Placement
from fabric.schedule.queue import AdmissionQueue, Charge
from fabric.states import KillCause

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 3.0  # cooperative cancel (KeyboardInterrupt) before the worker is killed
MAX_WAKEUP_S = 0.5
METRICS_FLUSH_S = 1.0


class Engine(Reruns):
    def __init__(self, store: Store, *, backend: Backend, home: str, artifacts: str,
                 control: tuple[str, str] | None = None, clock: Callable[[], float] = time.time,
                 use_images: bool = False, persist_outputs: bool = True, admission: AdmissionQueue | None = None,
                 cache_index: CacheIndex | None = None, keep_finished: int = 1000, keep_results: int = 100,
                 metrics: FabricMetrics | None = None, secrets_dir: str | None = None,
                 grant: Callable[[str, str, int], str] | None = None) -> None:
        """The registry passes in its settings (fabric/settings.py), the Ray backend, and the admission queue
        (`execute.scheduler.engine_scheduler`; None: admission is off, ready nodes go to Ray at once).
        `secrets_dir`: the head's secrets, read at each dispatch of a submission that lists scopes."""
        self._store = store
        self._scheduler = admission  # with admission, ready nodes wait in its queue (priorities, quotas, ...)
        self._artifacts = artifacts
        self._persist_outputs = persist_outputs
        self._use_images = use_images
        self._home = home
        self._secrets_dir = secrets_dir
        self._control = control
        self._clock = clock
        self._backend = backend
        self.metrics = metrics if metrics is not None else ray_metrics()
        self._metrics_at = time.monotonic()
        self._lock = threading.RLock()
        self._runs: dict[str, LiveRun] = {}
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._dispatcher = Dispatcher(backend, self._inbox, home=home, artifacts=artifacts, control=control,
                                      use_images=use_images, secrets_dir=secrets_dir, grant=grant)
        # `cache: true` nodes: reuse and coalescing (execute/cache.py), through a narrow seam
        self._cache = NodeCache(home, artifacts, cache_index)
        self._maps = MapTasks(backend, self._inbox, artifacts, persist_outputs, self._perform)  # map nodes' Ray work
        self._cache_host = EngineCacheHost(self._runs, self._perform, backend, artifacts, self._inbox)
        self._force_kills: list[tuple[float, AttemptHandle]] = []
        self._changed: set[str] = set()  # runs admission has not looked at since they changed
        self._stopping: set[tuple[str, str, int]] = set()  # preempted attempts in their grace period
        # Finished runs are kept compact: FABRIC_KEEP_RESULTS and FABRIC_KEEP_FINISHED (finished.bound_finished).
        self._keep_finished = keep_finished
        self._keep_results = min(keep_results, keep_finished)
        self._finished: OrderedDict[str, Finished] = OrderedDict()
        self._stopped = threading.Event()
        self.fenced: str | None = None  # why this engine stopped for good (its registry lost the store's lease)
        self._thread = threading.Thread(target=self._loop, name="fabric-engine", daemon=True)
        self._thread.start()

    # -- commands ------------------------------------------------------------------------------

    def start(self, record: SubmissionRecord, plan: ExecutionPlan, runtime_env: dict[str, Any] | None,
              code: dict[str, ray.ObjectRef] | None = None) -> None:
        machine = RunMachine(plan, self._clock, submission_id=record.submission_id,
                             gated=self._scheduler is not None)
        # Written first: if the store cannot take it, this raises and nothing at all has started.
        self._store.add_submission(record)
        with self._lock:
            persist = plan.persisted_outs(self._persist_outputs)
            self._runs[record.submission_id] = LiveRun(record, plan, machine, runtime_env, dict(code or {}), persist)
        self._inbox.put(Start(record.submission_id))

    def cancel(self, submission_id: str) -> None:
        run = self._lookup(submission_id)
        if isinstance(run, Finished):
            return  # it ended: nothing to cancel
        with self._lock:
            run.cancel_requested = True
        self._inbox.put(Cancel(submission_id))

    def forget(self, submission_id: str) -> None:
        """Drop a finished submission from memory, and with it the object-store outputs it held."""
        with self._lock:
            self._finished.pop(submission_id, None)

    def running_ids(self) -> list[str]:
        with self._lock:
            return [sid for sid, run in self._runs.items() if not run.machine.done]

    def kept(self) -> dict[str, int]:
        """What the registry holds in memory: live runs, and the finished ones with the bytes they keep."""
        with self._lock:
            return {"running": len(self._runs), **kept_summary(list(self._finished.values()))}

    def queues(self) -> dict[str, Any]:
        """Admission's queue and the teams' budgets (empty when admission is off)."""
        with self._lock:
            return self._scheduler.view() if self._scheduler else {"admission": False, "queue": [], "quotas": []}

    def has(self, submission_id: str) -> bool:
        return submission_id in self._runs or submission_id in self._finished

    def team_of(self, submission_id: str) -> tuple[bool, str | None]:  # the registry scopes reads with no store read
        return held_team(self._runs.get(submission_id) or self._finished.get(submission_id))

    def is_stopping(self, submission_id: str, node_id: str, attempt: int) -> bool:
        """Is this attempt being stopped (its submission cancelled, or it preempted)?"""
        return self.is_cancelled(submission_id) or (submission_id, node_id, attempt) in self._stopping

    def is_cancelled(self, submission_id: str) -> bool:
        run = self._runs.get(submission_id)
        return bool(run and run.cancel_requested)

    def report_progress(self, submission_id: str, node_id: str, attempt: int, fraction: float,
                        message: str) -> None:
        with self._lock:
            run = self._runs.get(submission_id)
            if run and node_id in run.machine.nodes and len(run.machine.nodes[node_id].attempts) == attempt:
                run.machine.on_progress(node_id, None, fraction, message)

    def chain_report(self, submission_id: str, items_bytes: bytes) -> None:
        """Members of a running fused task that succeeded, as plain data [(node, attempt, outcome)]: each becomes the
        `Done` of its current dispatch, if that is the attempt reported (the task's return reports them again:
        the loop ignores the repeat)."""
        items: list[tuple[str, int, Outcome]] = decode_chain_items(items_bytes)  # ReportInvalid: the caller's error
        with self._lock:
            run = self._runs.get(submission_id)
            if run is None:
                return
            for node_id, attempt, result in items:
                node = run.machine.nodes.get(node_id)
                token = node.token if node is not None else None
                handle = run.handles.get((node_id, token)) if token is not None else None
                if token is not None and handle is not None and handle.attempt == attempt:
                    self._inbox.put(Done(submission_id, node_id, token, result))

    def wait(self, submission_id: str, timeout: float | None) -> bool:
        run = self._lookup(submission_id)
        return True if isinstance(run, Finished) else run.done.wait(timeout)

    def shutdown(self) -> None:
        self._stopped.set()
        self._inbox.put(Stop())

    def fence(self, reason: str) -> None:
        """Another registry holds the store: record and dispatch nothing more, cancel what is in flight."""
        with self._lock:
            self.fenced, live = reason, in_flight(self._runs.values())
            self.shutdown()
        for handle in live:
            self._backend.cancel(handle, force=True)

    # -- queries -------------------------------------------------------------------------------

    def status(self, submission_id: str) -> SubmissionStatus:
        run = self._lookup(submission_id)
        if isinstance(run, Finished):  # flushed before it was compacted
            return run.status()
        # What a caller sees is on disk first: this run's events (never a wait behind other teams' writes).
        self._store.flush_submission(submission_id)
        with self._lock:
            return status_of(run.machine, run.record.submission_id)

    def submission_ids(self) -> list[str]:
        with self._lock:
            return list(self._runs) + list(self._finished)

    def result_ref(self, submission_id: str, node_id: str, out: str | None) -> ray.ObjectRef:
        run = self._lookup(submission_id)
        if isinstance(run, Finished):
            return finished_result(submission_id, run, node_id, out)
        with self._lock:
            return live_result(submission_id, run.machine, run.handles, node_id, out)

    def logs(self, submission_id: str, node_id: str) -> list[tuple[int, str, str | None]]:
        run = self._lookup(submission_id)
        order = [n.node_id for n in run.status().nodes] if isinstance(run, Finished) else list(run.machine.nodes)
        if node_id not in order:
            raise NotFoundError(f"submission {submission_id} has no node {node_id!r}",
                                code=ErrorCode.NOT_FOUND, where=node_id, fix=f"nodes are: {', '.join(order)}")
        # Whole logs from the head's disk, the running attempt's too (its chunks arrive while it runs).
        return full_logs(self._home, submission_id, node_id, self._store.get_log(submission_id, node_id))

    def _lookup(self, submission_id: str) -> LiveRun | Finished:
        # Live first: compaction adds the Finished before the run leaves the live set (so it is in one of them).
        run = self._runs.get(submission_id) or self._finished.get(submission_id)
        if run is None:
            raise NotFoundError(f"no submission {submission_id!r}", code=ErrorCode.NOT_FOUND,
                                where="submission_id", fix="list submissions with `fabric ls`")
        return run

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                batch = [self._inbox.get(timeout=self._next_wakeup())]
            except queue.Empty:
                batch = []
            while True:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            with self._lock:
                if self._stopped.is_set():  # fenced while it waited: act on nothing more
                    break
                touched: set[str] = set()
                for message in batch:
                    try:
                        touched.update(self._handle(message))
                    except Exception:  # noqa: BLE001 - one bad submission must not stop the engine
                        touched.update(self._fail_run(message))
                for submission_id in list(self._runs):
                    run = self._runs[submission_id]
                    deadline = run.machine.next_deadline()
                    if deadline is not None and deadline <= self._clock():
                        self._perform(run, run.machine.tick())
                        touched.add(submission_id)
                # Recorded before admission: it frees what ended before it books anew. Cache decisions first.
                self._changed |= touched | self._cache.tick(self._cache_host)  # admission looks at these
                self._record_all(self._changed)
                self._record_all(self._admit())
                self._due_force_kills()
            if time.monotonic() - self._metrics_at >= METRICS_FLUSH_S:
                self._metrics_at = time.monotonic()
                try:
                    self.metrics.flush()  # to Ray's metrics agent, which exports every 10 s anyway
                except Exception:  # noqa: BLE001 - metrics must never stop the work
                    log.exception("fabric metrics flush failed")

    def _record_all(self, submission_ids: set[str]) -> None:
        for submission_id in submission_ids:
            run = self._runs.get(submission_id)
            try:
                if run is not None:
                    self._record(run)
            except Exception:  # noqa: BLE001 - the store failing must not stop the engine
                log.error("fabric could not record %s:\n%s", submission_id, traceback.format_exc(),
                          extra={"submission_id": submission_id})

    def _fail_run(self, message: Message) -> list[str]:
        """An engine error on a submission: log it, cancel the submission's work, say why."""
        detail = traceback.format_exc()
        log.error("fabric engine error on %s:\n%s", message, detail)
        run = None if isinstance(message, Stop) else self._runs.get(message.submission_id)
        if run is None or run.machine.done:
            return []
        self._perform(run, run.machine.cancel(f"engine error: {detail.splitlines()[-1]}"))
        return [run.record.submission_id]

    def _handle(self, message: Message) -> list[str]:
        if isinstance(message, Stop):
            return []
        run = self._runs.get(message.submission_id)
        if run is None:
            return []
        if isinstance(message, Start):
            self._perform(run, run.machine.start())
        elif isinstance(message, Cancel):
            self._perform(run, run.machine.cancel())
        elif isinstance(message, Done):
            node_id, token, (report, error) = message.node_id, message.token, message.outcome
            handle = run.handles.get((node_id, token))
            if handle is None:
                return []
            if not run.machine.is_current(node_id, token):
                del run.handles[(node_id, token)]  # a withdrawn or superseded dispatch
                return []
            if run.machine.nodes[node_id].state.terminal:  # a fused member reported twice (execute/chain.py)
                if error is not None and handle.report is not None and run.persist.get(node_id):
                    # Its task died after it succeeded: its values are lost with the task, its persisted outs not.
                    refs = self._backend.load(self._artifacts, run.record.submission_id, node_id, run.persist[node_id])
                    run.handles[(node_id, token)] = AttemptHandle(None, refs, handle.attempt)
                return []
            if report.log_tail:
                self._store.put_log(run.record.submission_id, node_id, handle.attempt, report.log_tail,
                                    report.log_path)
            if error is None and report.skipped and run.plan.nodes[node_id].map is not None:
                self._maps.skipped(run, node_id, token)  # its condition was false: SKIPPED as any node
            elif error is None and run.plan.nodes[node_id].map is not None:  # its items were counted: expand
                self._split_done(run, node_id, handle.attempt)
                self._maps.expand(run, node_id, token, report)
                return [run.record.submission_id]
            self._perform(run, run.machine.on_result(node_id, token, report, error))
            if run.machine.nodes[node_id].token != token:
                run.handles.pop((node_id, token), None)
        elif not isinstance(message, Wake):  # a Wake only marks the run touched, so the loop looks again
            raise TypeError(f"the engine has no handler for {message!r}")
        return [run.record.submission_id]

    def _admit(self) -> set[str]:
        changed, self._changed = self._changed, set()
        if self._scheduler is None:
            return set()
        try:
            admitted = self._scheduler.admit((sid, run.machine if run else None, run.record.team if run else None)
                                             for sid in changed for run in (self._runs.get(sid),))  # O(changes)
            victims = self._scheduler.victims()
        except Exception:  # noqa: BLE001 - a failed round is retried next loop; the loop must live
            log.exception("fabric admission round failed")
            self._changed |= changed
            return set()
        for sid, node_id, placement in admitted:
            if not (actions := self._runs[sid].machine.admit(node_id)):  # it stopped waiting: give its booking back
                self._scheduler.release(f"{sid}/{node_id}")
            try:
                self._perform(self._runs[sid], actions, placement)
            except Exception:  # noqa: BLE001 - as in the loop: one bad submission must not stop the engine
                self._fail_run(Wake(sid))
        preempted = [(sid, node_id, why) for sid, node_id, why in victims if sid in self._runs]
        for sid, node_id, why in preempted:  # their bookings go with their RUNNING -> QUEUED transitions
            self._perform(self._runs[sid], self._runs[sid].machine.preempt(node_id, why))
        self._changed |= (touched := {sid for sid, _, _ in admitted} | {sid for sid, _, _ in preempted})
        return touched  # seen by the next round too: a preempted node waits again

    def _split_done(self, run: LiveRun, node_id: str, attempt: int) -> None:
        """A map's count task ended: the map stays RUNNING while its children run on bookings of their own, so its
        own booking (capacity and quota) goes back now, charged to it; held, it took a slot from its children."""
        if self._scheduler is not None and (cost := self._scheduler.release(f"{run.record.submission_id}/{node_id}")):
            run.machine.add_cost(node_id, cost)
            self._store.append_events(cost_events(run.record.submission_id, [Charge(node_id, attempt, self._clock(),
                                                                                     cost)]))

    def _perform(self, run: LiveRun, actions: list[Action], placement: Placement | None = None) -> None:
        sid, actions = run.record.submission_id, self._maps.intercept(run, actions)  # a map's count, split, gather
        for action in actions:
            if isinstance(action, Kill):
                handle = run.handles.get((action.node_id, action.token))
                if handle is not None:
                    force = action.cause.force
                    if action.cause is KillCause.PREEMPTED:
                        self._stopping.add((sid, action.node_id, handle.attempt))
                    self._backend.cancel(handle, force=force)
                    if not force:
                        self._force_kills.append((self._clock() + CANCEL_GRACE_S, handle))
        self._dispatcher.dispatch(run, actions, placement)

    def _record(self, run: LiveRun) -> None:
        transitions = run.machine.drain_transitions()
        if transitions:
            sid = run.record.submission_id
            self._store.append_events([Event(sid, t.node_id, t.source, t.target, t.at, t.attempt, t.reason)
                                       for t in transitions])
            costs = self._scheduler.on_transitions(sid, transitions, run.machine) if self._scheduler else []
            if costs:  # ended attempts gave back their booking; what they cost (most rounds: nothing, no write)
                self._store.append_events(cost_events(sid, costs))
            try:
                self.metrics.on_transitions(sid, run.record.team, run.plan.nodes, transitions)
            except Exception:  # noqa: BLE001 - metrics must never stop the work
                log.exception("fabric metrics failed for %s", sid, extra={"submission_id": sid})
        if run.machine.done and not run.done.is_set():
            run.record.state = str(run.machine.state)
            try:
                # The end of a submission is on disk, every event of it, before anyone is told it ended.
                self._store.flush()
                self._store.set_state(run.record.submission_id, str(run.machine.state))
            finally:
                run.done.set()  # waiters must wake even when the store is failing
            self._compact(run)

    def _compact(self, run: LiveRun) -> None:
        """Move a finished run out of the live set (the loop then never looks at it again)."""
        sid = run.record.submission_id
        self._finished[sid] = finished_run(run)
        start_report(self._artifacts, sid, self._finished[sid].status_json)  # <artifacts>/<sid>/metrics.json
        del self._runs[sid]
        self._stopping = {key for key in self._stopping if key[0] != sid}
        bound_finished(self._finished, self._keep_results, self._keep_finished)

    def _next_wakeup(self) -> float:
        now = self._clock()
        with self._lock:
            times = [d for r in self._runs.values() if not r.machine.done
                     for d in (r.machine.next_deadline(),) if d is not None]
            times += [t for t, _ in self._force_kills]
            due = self._scheduler.due_in() if self._scheduler is not None else None  # new waiting nodes' round
            times += [now + due] if due is not None else []
        return min(max(min(times) - now, 0.001), MAX_WAKEUP_S) if times else MAX_WAKEUP_S

    def _due_force_kills(self) -> None:
        now = self._clock()
        due = [h for t, h in self._force_kills if t <= now]
        self._force_kills = [(t, h) for t, h in self._force_kills if t > now]
        for handle in due:
            self._backend.cancel(handle, force=True)

