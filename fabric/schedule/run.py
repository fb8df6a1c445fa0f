"""The run state machine of one submission: pure, clock injected, emits actions for the executor.

Nodes are dispatched *eagerly*: as soon as every upstream node has been dispatched, wired to the upstream
attempts' future outputs, so Ray resolves the data dependency without a round trip through the fabric. A node
is RUNNING only once its upstreams succeeded; earlier results are buffered, dispatches wired to a failed
attempt are withdrawn.

A *gated* machine (admission on) dispatches nothing by itself: a ready node waits QUEUED in `waiting()` until
the scheduler calls `admit(node_id)`. A `cache: true` node always waits so, held: the cache decides."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from fabric.plan import ExecutionPlan
from fabric.schedule.actions import Action, Attempt, Clock, Dispatch, Kill, NodeRun, Outcome, Transition
from fabric.schedule.exits import ExitHooks
from fabric.schedule.mapping import MapSteps
from fabric.schedule.riders import PackSteps
from fabric.states import KillCause, NodeState, SubmissionState, check_node_transition, check_submission_transition
from fabric.types import AttemptReport, ErrorInfo


class RunMachine(MapSteps, PackSteps):
    """All decisions about one submission's nodes. Feed it results and ticks; it returns actions.

    Each event costs O(degree of the nodes it touches): readiness is kept in per-node counters and deadlines
    in a timer index, so a 1,000-node fan-in does not rescan its parents per event."""

    def __init__(self, plan: ExecutionPlan, clock: Clock, *, submission_id: str = "", gated: bool = False) -> None:
        self.plan = plan
        self.gated = gated
        self._waiting: dict[str, None] = {}  # gated: QUEUED nodes not yet admitted, in the order they got ready
        self._waiting_cached: dict[str, None] = {}  # the `cache: true` ones among them (asked for every loop)
        self.held: set[str] = set()  # `cache: true` nodes admission skips: before their cache check, or coalesced
        self._unsynced: set[str] = set()  # nodes whose waiting (for admission) may have changed since last asked
        self.submission_id = submission_id
        self._clock = clock
        self._tokens = itertools.count(1)
        self.nodes: dict[str, NodeRun] = {n: NodeRun(plan.nodes[n]) for n in plan.order}
        self.state = SubmissionState.RUNNING
        self.created_at = clock()
        self.ended_at: float | None = None
        self.deadline = self.created_at + plan.max_runtime if plan.max_runtime else None
        self._pending_transitions: list[Transition] = []
        self._timers: dict[str, float] = {}  # node id -> its running deadline or retry time
        self._terminal = 0
        self.exits = ExitHooks(plan)  # exit hooks: held until every other node has ended (schedule/exits.py)
        self._fans = {}  # map nodes expanded, by id (schedule/mapping.py)
        self._pack_next, self._longest = {}, {}  # gated packs (schedule/riders.py)

    @classmethod
    def restore(cls, plan: ExecutionPlan, clock: Clock, *, submission_id: str, created_at: float,
                states: Mapping[str, NodeState],
                history: Mapping[str, Sequence[tuple[float, float | None, str | None]]],
                gated: bool = False) -> RunMachine:
        """A machine resuming a submission from its record. Terminal nodes stay as they ended (a SUCCEEDED node
        gets a token: its outputs come back from the artifact store, see `restored_tokens`); every other node
        starts over as PENDING. `history` is each node's attempts as (started, ended, outcome); an attempt that
        never ended was interrupted and is not charged to the retry budget."""
        machine = cls(plan, clock, submission_id=submission_id, gated=gated)
        machine.created_at = created_at
        machine.deadline = created_at + plan.max_runtime if plan.max_runtime else None
        for node_id, node in machine.nodes.items():
            for number, (started, ended, outcome) in enumerate(history.get(node_id, ()), start=1):
                interrupted = ended is None  # ended as replayed: RUNNING -> QUEUED (execute/resume.py)
                ended_as = NodeState.QUEUED if interrupted else NodeState(outcome) if outcome else None
                node.attempts.append(Attempt(number, started, ended if not interrupted else clock(), ended_as))
                node.uncounted += interrupted
            state = states.get(node_id, NodeState.PENDING)
            if state.terminal:
                node.state = state
                machine._terminal += 1
                if state.ok:
                    machine._set_token(node, next(machine._tokens))
        machine._stash_children(states, history)  # a map's children come back when it expands again
        for node in machine.nodes.values():
            node.ok_upstream = sum(machine.nodes[u].state.settled for u in node.plan.upstream)
            node.skipped_upstream = [u for u in node.plan.upstream if machine.nodes[u].state is NodeState.SKIPPED]
        return machine

    def restored_tokens(self) -> dict[str, int]:  # nodes that had already succeeded when it was restored
        return {n: run.token for n, run in self.nodes.items() if run.state.ok and run.token is not None}

    # -- queries -------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.state.terminal

    def next_deadline(self) -> float | None:
        times = list(self._timers.values())
        if self.deadline is not None and not self.done:
            times.append(self.deadline)
        return min(times) if times else None

    def drain_transitions(self) -> list[Transition]:
        out, self._pending_transitions = self._pending_transitions, []
        return out

    def is_current(self, node_id: str, token: int) -> bool:
        return self.nodes[node_id].token == token

    def waiting(self) -> list[str]:
        """Gated: the nodes that are ready and wait for admission, oldest first."""
        return [n for n in self._waiting if n not in self.held] if self.held else list(self._waiting)

    def waiting_changes(self) -> list[tuple[str, bool]]:
        """The nodes whose waiting for admission may have changed since the last call, each with whether it
        waits now: the admission queue follows a run in O(what changed), not O(its waiting nodes)."""
        changes = [(n, n in self._waiting and n not in self.held) for n in self._unsynced]
        self._unsynced.clear()
        return changes

    def ready_cached(self) -> list[str]:  # `cache: true` nodes that wait for their cache check
        return list(self._waiting_cached)  # O(those), not O(every waiting node): the engine asks each loop

    def hold(self, node_id: str, reason: str) -> None:  # coalesced: admission skips it until it leaves QUEUED
        if node_id in self._waiting:
            self.held.add(node_id)
            self._unsynced.add(node_id)
            self.nodes[node_id].reason = reason

    def unhold(self, node_id: str) -> None:  # its cache check is done: admission may take it now
        self.held.discard(node_id)
        self._unsynced.add(node_id)
        self._waiting_cached.pop(node_id, None)  # decided (it runs): not asked again each loop (maps of thousands)

    def cache_hit(self, node_id: str, reason: str) -> list[Action]:
        """A ready cache node reuses an identical finished node's outputs: CACHED, with a token for them."""
        node = self.nodes[node_id]
        if node_id not in self._waiting or node.state is not NodeState.QUEUED or self.done:
            return []
        self._set_token(node, next(self._tokens))
        self._move(node, NodeState.CACHED, reason)
        return self._settle([node_id, *node.plan.downstream])  # itself: a map's child tells its map it ended

    def preempt(self, node_id: str, reason: str) -> list[Action]:
        """Stop a RUNNING attempt for more urgent work and requeue the node (not charged to its retry budget)."""
        node = self.nodes[node_id]
        if node.state is not NodeState.RUNNING or node.token is None or self.done:
            return []
        kill = Kill(node_id, node.token, KillCause.PREEMPTED, reason)
        node.attempts[-1].ended_at, node.attempts[-1].outcome = self._clock(), NodeState.QUEUED
        node.uncounted += 1
        self._set_token(node, None)
        self._withdraw_descendants(node_id)
        self._move(node, NodeState.QUEUED, reason)
        return [kill, *([] if self.gated else self._settle([node_id]))]

    def carried_next(self, node_id: str, succeeded: bool) -> str | None:
        """The member after `node_id` in its Ray task that has not ended, the task's admission booking passes to
        it: its pack's next child (a failure stops no other), or its fused chain's next member after a success."""
        following = self._pack_next.pop(node_id, None)
        if following is None:
            following = next((d for d in self.nodes[node_id].plan.downstream if succeeded
                              and self.nodes[d].plan.fused_after == node_id and self.nodes[d].token is not None), None)
            while following is not None and self.nodes[following].state.terminal:
                following = self._pack_next.pop(following, None)
            return following
        # A pack's member that ended, or failed and waits for its retry (admitted on a booking of its own): passed.
        while following is not None and self.nodes[following].state is not NodeState.RUNNING:
            following = self._pack_next.pop(following, None)
        return following

    def add_cost(self, node_id: str, amount: float) -> None:
        self.nodes[node_id].cost += amount
    def note_waiting(self, node_id: str, reason: str) -> None:  # gated: why it waits (the scheduler's words)
        if node_id in self._waiting:
            self.nodes[node_id].reason = reason

    def admit(self, node_id: str) -> list[Action]:
        """Gated: release a waiting node to run now (a no-op when it stopped waiting meanwhile), its fused chain too."""
        node = self.nodes[node_id]
        if node_id not in self._waiting or node.state is not NodeState.QUEUED or self.done:
            return []
        del self._waiting[node_id]
        self._waiting_cached.pop(node_id, None)
        self._unsynced.add(node_id)
        actions = [self._dispatch(node)]
        self._run(node)
        for rider in self._pack_riders(node):  # a pack runs in its Ray task (schedule/riders.py)
            del self._waiting[rider.plan.node_id]
            self._waiting_cached.pop(rider.plan.node_id, None)  # a cached map's child whose check missed
            self._unsynced.add(rider.plan.node_id)
            actions.append(self._dispatch(rider))
            self._run(rider)
        return [*actions, *self._settle(node.plan.downstream)]  # its fused chain goes in its Ray task (plan/fuse)

    # -- inputs --------------------------------------------------------------------------------

    def start(self) -> list[Action]:
        return self._settle(self.plan.order)

    def on_result(self, node_id: str, token: int, report: AttemptReport, error: ErrorInfo | None = None) -> list:
        """An attempt ended (error None means success). Stale tokens are ignored."""
        node = self.nodes[node_id]
        if node.token != token or self.done:
            return []
        outcome = Outcome(ok=error is None, report=report, error=error)
        if node.state is NodeState.RUNNING:
            self._finish_attempt(node, outcome)
        elif node.state in (NodeState.PENDING, NodeState.QUEUED):
            # Arrived before every upstream was seen to succeed: it may be an upstream failure echoing.
            node.buffered = outcome
            return []
        return self._settle([node_id, *node.plan.downstream])

    def on_progress(self, node_id: str, token: int | None, fraction: float, message: str) -> None:
        node = self.nodes[node_id]
        if node.state is NodeState.RUNNING and (token is None or token == node.token):
            node.progress, node.message = fraction, message

    def tick(self) -> list[Action]:
        """Apply every deadline and backoff that has come due."""
        now = self._clock()
        if self.deadline is not None and now >= self.deadline and not self.done:
            why = f"submission exceeded max_runtime {self.plan.max_runtime:g}s"
            return self._end_all(SubmissionState.TIMED_OUT, NodeState.TIMED_OUT, KillCause.DAG_TIMEOUT, why)
        actions: list[Action] = []
        due = [n for n, t in self._timers.items() if t <= now]
        for node_id in due:
            node = self.nodes[node_id]
            if node.state is NodeState.RUNNING and node.token is not None:
                actions.append(Kill(node_id, node.token, KillCause.NODE_TIMEOUT, "max_runtime exceeded"))
                error = ErrorInfo("Timeout", f"node exceeded max_runtime {node.plan.max_runtime or 0:g}s")
                self._finish_attempt(node, Outcome(False, AttemptReport(ended_at=now), error),
                                     timed_out=True)
            elif node.state is NodeState.RETRYING:
                node.retry_at = None
                self._move(node, NodeState.QUEUED, "backoff elapsed")
        touched = [d for n in due for d in (n, *self.nodes[n].plan.downstream)]
        return actions + self._settle(touched)

    def cancel(self, reason: str = "cancelled by user") -> list[Action]:
        if self.done:
            return []
        return self._end_all(SubmissionState.CANCELLED, NodeState.CANCELLED, KillCause.CANCELLED, reason)

    # -- internals -----------------------------------------------------------------------------

    def _move(self, node: NodeRun, target: NodeState, reason: str = "") -> None:
        check_node_transition(node.plan.node_id, node.state, target)
        now = self._clock()
        self._pending_transitions.append(Transition(node.plan.node_id, node.state, target, now,
                                                    len(node.attempts), reason))
        was_settled = node.state.settled
        node.state, node.reason = target, reason
        if target.settled and not was_settled:  # a SKIPPED parent is settled too: its children follow on_skipped
            for child in node.plan.downstream:
                self.nodes[child].ok_upstream += 1
                if target is NodeState.SKIPPED:
                    self.nodes[child].skipped_upstream.append(node.plan.node_id)
        if target is NodeState.QUEUED:
            node.queued_at = now
            if self.gated or node.plan.cache:  # a cache node waits for its cache check, held from admission
                self._waiting[node.plan.node_id] = None
                self._unsynced.add(node.plan.node_id)
                if node.plan.cache:
                    self.held.add(node.plan.node_id)
                    self._waiting_cached[node.plan.node_id] = None
        else:
            if self._waiting.pop(node.plan.node_id, 0) is None:  # it waited
                self._unsynced.add(node.plan.node_id)
                self._waiting_cached.pop(node.plan.node_id, None)
            self.held.discard(node.plan.node_id)
        if target.terminal:
            self._terminal += 1
            if not target.ok:  # a successful attempt keeps its token: downstream reads its outputs
                self._set_token(node, None)
        if target is not NodeState.RUNNING:
            node.deadline = None
        timer = node.deadline if target is NodeState.RUNNING else node.retry_at
        if timer is None or target.terminal:
            self._timers.pop(node.plan.node_id, None)
        else:
            self._timers[node.plan.node_id] = timer

    def _set_token(self, node: NodeRun, token: int | None) -> None:
        had = node.token is not None
        node.token = token
        if had != (token is not None):
            delta = 1 if token is not None else -1
            for child in node.plan.downstream:
                self.nodes[child].dispatched_upstream += delta
        if token is None:
            node.buffered, node.input_tokens = None, {}

    def _end_submission(self, target: SubmissionState, reason: str = "") -> None:
        check_submission_transition(self.submission_id, self.state, target)
        now = self._clock()
        self._pending_transitions.append(Transition(None, self.state, target, now, 0, reason))
        self.state = target
        self.ended_at = now

    def _finish_attempt(self, node: NodeRun, outcome: Outcome, *, timed_out: bool = False) -> None:
        now = self._clock()
        attempt = node.attempts[-1]
        attempt.ended_at = now
        attempt.report = outcome.report
        attempt.error = outcome.error
        if outcome.report.progress is not None:
            node.progress = outcome.report.progress
        if outcome.report.message:
            node.message = outcome.report.message
        if outcome.ok and outcome.report.skipped:  # its condition was false (or an input skipped): no outputs
            attempt.outcome = NodeState.SKIPPED
            self._move(node, NodeState.SKIPPED, outcome.report.skipped[:300])
            return
        self.note_run(node.plan, outcome.report)  # a failure's run time counts too: it sizes its siblings' packs
        if outcome.ok:
            attempt.outcome = NodeState.SUCCEEDED
            node.progress = 1.0
            self._move(node, NodeState.SUCCEEDED)
            return
        self._set_token(node, None)
        self._withdraw_descendants(node.plan.node_id)
        if len(node.attempts) - node.uncounted < node.plan.retry.max_attempts:
            attempt.outcome = NodeState.RETRYING
            delay = node.plan.retry.delay_after(len(node.attempts) - node.uncounted)
            node.retry_at = now + delay
            cause = f"{outcome.error.type}: {outcome.error.message}" if outcome.error else "failed"
            self._move(node, NodeState.RETRYING, f"attempt {attempt.number} {cause[:300]}; retry in {delay:g}s")
            return
        final = NodeState.TIMED_OUT if timed_out else NodeState.FAILED
        attempt.outcome = final
        self._move(node, final, outcome.error.message if outcome.error else "")
        for descendant in self.plan.descendants(node.plan.node_id):
            run = self.nodes[descendant]
            if not run.state.terminal:
                self._move(run, NodeState.SKIPPED, f"upstream {node.plan.node_id} {final}")

    def _withdraw_descendants(self, node_id: str) -> None:
        """Dispatches wired to a failed attempt's outputs will only echo its error: forget them."""
        for descendant in self.plan.descendants(node_id):
            run = self.nodes[descendant]
            if run.state in (NodeState.PENDING, NodeState.QUEUED):
                self._set_token(run, None)

    def _end_all(self, ending: SubmissionState, becomes: NodeState, cause: KillCause, reason: str) -> list[Action]:
        actions: list[Action] = []
        for node in self.nodes.values():
            if node.state.terminal:
                continue
            if node.token is not None:
                actions.append(Kill(node.plan.node_id, node.token, cause, reason))
            if node.state is NodeState.RUNNING:
                node.attempts[-1].ended_at = self._clock()
                node.attempts[-1].outcome = becomes
                self._move(node, becomes, reason)
            else:
                self._move(node, NodeState.CANCELLED if ending is SubmissionState.CANCELLED
                           else NodeState.SKIPPED, reason)
            node.retry_at = None
        self._end_submission(ending, reason)
        return actions

    def _settle(self, touched: Iterable[str]) -> list[Action]:
        """Promote ready nodes, apply buffered results and dispatch what can go (touched nodes, transitively)."""
        actions: list[Action] = []
        work = deque(touched)
        while work and not self.done:
            node = self.nodes[work.popleft()]
            before = (node.state, node.token)
            upstream_ok = node.ok_upstream == len(node.plan.upstream)
            if node.state is NodeState.PENDING and upstream_ok and node.skipped_upstream and \
                    node.plan.on_skipped != "run":
                actions.extend(self._skip_after(node))
            if node.state is NodeState.PENDING and upstream_ok and self.exits.may_start(node):
                self._move(node, NodeState.QUEUED, "upstream done" if node.plan.upstream else "")
            if node.state is NodeState.QUEUED and not node.plan.cache and (not self.gated or node.token is not None):
                if node.token is None:
                    actions.append(self._dispatch(node))
                self._run(node)
            if node.state is NodeState.RUNNING and node.buffered is not None:
                outcome, node.buffered = node.buffered, None
                self._finish_attempt(node, outcome)
            if ((not self.gated or node.plan.fused_after) and node.state is NodeState.PENDING and node.token is None
                    and node.plan.dispatch_early and node.dispatched_upstream == len(node.plan.upstream)):
                actions.append(self._dispatch(node))
            if node.plan.map is not None or (node.plan.map_parent and node.state.terminal):
                actions.extend(self._map_step(node, work))  # schedule/mapping.py
            if (node.state, node.token) != before:
                work.extend(node.plan.downstream)
        if not self.done and self.exits.due(self._terminal, self.nodes):
            run, skip = self.exits.release(self.nodes)
            for node_id, why in skip:
                self._move(self.nodes[node_id], NodeState.SKIPPED, why)
            return actions + self._settle(run)
        if not self.done and self._terminal == len(self.nodes):
            # SKIPPED by a condition is a success; SKIPPED after a failure comes with that FAILED node (exits.py);
            # a map's failed children count through their map (its min_success_ratio)
            ok = self.exits.succeeded(self.nodes)
            self._end_submission(SubmissionState.SUCCEEDED if ok else SubmissionState.FAILED)
        return actions

    def _skip_after(self, node: NodeRun) -> list[Action]:
        """The default rule: a node with a SKIPPED parent is SKIPPED too (its eager dispatch, if any, stopped)."""
        reason = f"upstream {', '.join(node.skipped_upstream[:3])} skipped"
        kill: list[Action] = [Kill(node.plan.node_id, node.token, KillCause.CANCELLED, reason)] if node.token else []
        self._move(node, NodeState.SKIPPED, reason)
        return kill

    def _dispatch(self, node: NodeRun) -> Dispatch:
        self._set_token(node, next(self._tokens))
        # Inputs may come from any ancestor, not only a parent: wire to each producer's dispatch. Every producer
        # was dispatched before this node (eager dispatch), so its token is set, unless it was SKIPPED (None).
        producers = {*node.plan.upstream, *(wire.producer for wire in node.plan.inputs)}
        node.input_tokens = {u: self.nodes[u].token for u in producers}
        assert node.token is not None
        return Dispatch(node.plan.node_id, len(node.attempts) + 1, node.token, tuple(node.input_tokens.items()))

    def _run(self, node: NodeRun) -> None:
        now = self._clock()
        node.attempts.append(Attempt(number=len(node.attempts) + 1, started_at=now))
        node.deadline = now + node.plan.max_runtime if node.plan.max_runtime else None
        node.progress, node.message = 0.0, ""
        self._move(node, NodeState.RUNNING, f"attempt {len(node.attempts)}")
