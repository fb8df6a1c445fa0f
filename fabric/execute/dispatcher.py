"""The engine's dispatches made Ray work: one backend task per node, or one per fused chain (plan/fuse.py)."""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from fabric.execute.backend import node_runtime_env
from fabric.execute.chain import ChainCall
from fabric.execute.conditions import Skipped
from fabric.execute.fusion import admitted_packs, fused_groups, map_packs, wire_chain
from fabric.execute.live import LiveRun
from fabric.execute.ports import AttemptHandle, Backend, Done, Message, Outcome
from fabric.kinds import NodeCall
from fabric.schedule import Action, Dispatch
from fabric.schedule.admission import Placement
from fabric.schedule.exits import run_outcome
from fabric.secrets import head_secrets


class Dispatcher:
    """Turns a machine's Dispatch actions into backend attempts; completions go to the engine's inbox as `Done`."""

    def __init__(self, backend: Backend, inbox: queue.SimpleQueue[Message], *, home: str, artifacts: str,
                 control: tuple[str, str] | None, use_images: bool, secrets_dir: str | None,
                 grant: Callable[[str, str, int], str] | None = None) -> None:
        self._backend, self._inbox, self._secrets_dir = backend, inbox, secrets_dir
        self._grant = grant  # grant(sid, node, attempt): the attempt's own capability (fabric/capability.py)
        self._home, self._artifacts, self._control, self._use_images = home, artifacts, control, use_images
        # Fused chains go as one task where the backend can run them (RayBackend); otherwise one task per node.
        self._submit_chain: Callable[..., list[AttemptHandle]] | None = getattr(backend, "submit_chain", None)

    def dispatch(self, run: LiveRun, actions: Sequence[Action], placement: Placement | None) -> None:
        chains = fused_groups(run.plan, actions) if self._submit_chain is not None else {}
        packs: dict[str, list[Dispatch]] = {}
        if self._submit_chain is not None and run.machine.gated:  # an admitted node and its riders (riders.py)
            packs = admitted_packs(actions, run.machine.pack_next)
        elif self._submit_chain is not None:
            packs = map_packs(run.plan, actions)
        riders = {d.node_id for group in (*chains.values(), *packs.values()) for d in group[1:]}
        for action in actions:
            if not isinstance(action, Dispatch) or action.node_id in riders:
                continue  # a rider runs in its chain head's Ray task
            group = chains.get(action.node_id)
            if group is not None:
                self._chain(run, group, placement)
                continue
            pack = packs.get(action.node_id)
            if pack is not None:
                self._chain(run, pack, placement, independent=True)
                continue
            node = run.plan.nodes[action.node_id]
            inputs = []
            tokens = dict(action.input_tokens)
            code = run.code.get(node.entrypoint or "")
            if code is not None:
                inputs.append(code)
            for wire in node.inputs:
                inputs.append(input_ref(run, wire.producer, tokens[wire.producer], wire.out))
            env = node_runtime_env(run.runtime_env, node.env, node.image if self._use_images else None)
            token = action.token
            run.handles[(node.node_id, token)] = self._backend.submit(
                self._call(run, action, code is not None, self._secrets(run)), node.unit, inputs, env, placement,
                partial(self._on_done, run.record.submission_id, node.node_id, token))

    def _secrets(self, run: LiveRun) -> dict[str, dict[str, str]]:
        # Read now, on the head, for this attempt only (fabric/secrets.py): a rotated value is picked up.
        return head_secrets(self._secrets_dir, run.plan.secrets_scope) if run.plan.secrets_scope else {}

    def _call(self, run: LiveRun, action: Dispatch, inline_code: bool, secrets: dict[str, dict[str, str]]
              ) -> NodeCall:
        node = run.plan.nodes[action.node_id]
        return NodeCall(
            submission_id=run.record.submission_id, pipeline_id=run.plan.pipeline_id, node_id=node.node_id,
            digest=node.digest_outputs, attempt=action.attempt, kind=node.kind, entrypoint=node.entrypoint,
            params=node.params, input_names=tuple(w.name for w in node.inputs), result_slots=node.result_slots,
            declared_outs=node.outs, home=self._home, control=self._control, unit=node.unit, team=run.record.team,
            secrets=run.plan.secrets_scope, secret_values=secrets, inline_code=inline_code,
            grant=self._grant(run.record.submission_id, node.node_id, action.attempt) if self._grant else "",
            persist=run.persist.get(node.node_id, ()), artifacts=self._artifacts,
            when=node.when, when_params=node.when_params, on_skipped=node.on_skipped,
            run_outcome=run_outcome(run.record.submission_id, run.plan.pipeline_id, run.machine.nodes)
            if node.on_exit else None, batch_over=node.batch_over)

    def _chain(self, run: LiveRun, group: list[Dispatch], placement: Placement | None, *,
               independent: bool = False) -> None:
        """Members of a fused chain (or a pack of map children: `independent`), dispatched together, as one Ray
        task; each keeps its own token and handle."""
        assert self._submit_chain is not None
        inputs, sources = wire_chain(run.plan, group, run.code,
                                     partial(input_ref, run))
        secrets = self._secrets(run)  # one submission's scopes: the same values for every member
        calls = [self._call(run, d, run.code.get(run.plan.nodes[d.node_id].entrypoint or "") is not None, secrets)
                 for d in group]
        head = run.plan.nodes[group[0].node_id]
        env = node_runtime_env(run.runtime_env, head.env, head.image if self._use_images else None)
        members = [(d.node_id, d.token) for d in group]
        handles = self._submit_chain(ChainCall(tuple(calls), tuple(sources), independent), head.unit, inputs, env,
                                     placement, partial(self._on_chain_done, run.record.submission_id, members))
        for (node_id, token), handle in zip(members, handles, strict=True):
            run.handles[(node_id, token)] = handle

    def _on_done(self, submission_id: str, node_id: str, token: int, outcome: Outcome) -> None:
        self._inbox.put(Done(submission_id, node_id, token, outcome))  # from a backend thread: only enqueue

    def _on_chain_done(self, submission_id: str, members: list[tuple[str, int]], outcomes: list[Outcome]) -> None:
        # In run order: a member's success reaches the machine before its successor's result.
        for (node_id, token), result in zip(members, outcomes, strict=True):
            self._inbox.put(Done(submission_id, node_id, token, result))


def input_ref(run: LiveRun, producer: str, token: int | None, out: str) -> Any:
    """The ref of a producer's out; `Skipped` when the producer was SKIPPED (no token): the node then skips
    too, or runs without that input (`on_skipped: run`), in its worker (execute/conditions.py)."""
    if token is None:
        return Skipped(producer)
    return run.handles[(producer, token)].values[out]
