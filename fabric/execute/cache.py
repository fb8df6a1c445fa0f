"""Node caching and merging for the engine: a ready `cache: true` node whose key matches a finished node
reuses its persisted outputs (CACHED); one identical to a node running now waits for it (coalesced) and
then reuses its outputs; otherwise it runs, and on success it becomes the entry for its key.

The key is the node's spec (kind, params, entrypoint, env, image, outs), the version of its code (the
source of the entrypoint's module and of the kind's implementation, read where the nodes run) and the
digests of the *values* of its inputs, which the producers report when they finish
(`NodeCall.digest`). Two runs over different data never share an entry, even under the same names.
A cached map's child is such a node: its `over` input's digest is its item's (or batch's) content hash, from
the map's count task (plan/expand.py `item_digest`); its other inputs are the map node's.
Keys are per team (`cache_namespace`): team A's node never reuses, waits for or overwrites team B's entry,
and so never gets B's files copied into its submission, unless both nodes say `cache: shared` (a grant).

The engine calls `tick` once per loop, before it records and admits, with its `CacheHost` (execute/ports.py):
the cache sees and does only what that seam offers. Nothing here blocks on Ray.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray

from fabric.digests import module_digest
from fabric.execute.backend import off_head
from fabric.execute.outputs import copy_node_files, has_outputs
from fabric.execute.ports import CacheHost, RunView
from fabric.plan.hashing import node_content_hash
from fabric.record.cache import CacheEntry, CacheIndex, MemoryCacheIndex, PostgresCacheIndex, SqliteCacheIndex
from fabric.schedule.actions import Action
from fabric.states import NodeState, Wait, WaitReason

log = logging.getLogger(__name__)

_PENDING = "pending"  # a key that cannot be computed yet (code versions on their way)


def open_cache_index(home: str, store: str = "sqlite") -> CacheIndex:
    """Beside the store: in memory with a memory store (FABRIC_STORE=memory), a table of the PostgreSQL store's
    database with a postgresql:// store, else `<home>/cache.db`."""
    if store == "memory":
        return MemoryCacheIndex()
    if store.startswith(("postgresql://", "postgres://")):
        return PostgresCacheIndex(store)
    return SqliteCacheIndex(Path(home) / "cache.db")


SHARED_NAMESPACE = "shared"


def cache_namespace(team: str | None, shared: bool) -> str:
    """Whose entries a node may reuse, and feed: its team's own (coalescing too), or, for a `cache: shared` node
    (a grant the gateway checks, fabric/schedule/grants.py), the entries shared between teams. Work submitted
    without a team (`fabric run`, the SDK on Ray) keeps the namespace of keys from before teams had one."""
    if shared:
        return SHARED_NAMESPACE
    return "" if team is None else f"team:{team}"


def namespaced_key(namespace: str, content: str) -> str:
    """The index key: one team's key can never equal another's, so no entry is reused or overwritten across."""
    if not namespace:
        return content
    return hashlib.sha256(f"{namespace}\0{content}".encode()).hexdigest()


def code_versions(entrypoints: Sequence[str], kinds: Sequence[str], inline: Sequence[str], *blobs: bytes
                  ) -> dict[str, str]:
    """Runs where the nodes run (same runtime_env): the version of each entrypoint's module, of each kind's
    implementation, and of each notebook function (its pickled bytes)."""
    from fabric.kinds import available_kinds

    versions = {f"entry:{e}": module_digest(e.partition(":")[0]) for e in entrypoints}
    found = available_kinds()
    for kind in kinds:
        versions[f"kind:{kind}"] = module_digest(type(found[kind]).__module__) if kind in found else "?"
    for name, blob in zip(inline, blobs, strict=True):
        versions[f"entry:{name}"] = hashlib.blake2b(blob, digest_size=20).hexdigest()
    return versions


class NodeCache:
    def __init__(self, home: str, artifacts: str, index: CacheIndex | None = None) -> None:
        self._index = index if index is not None else open_cache_index(home)
        self._artifacts = artifacts
        self._probe = ray.remote(code_versions)
        self._copy = ray.remote(copy_node_files).options(num_cpus=0, max_retries=2)
        self._versions: dict[str, dict[str, str] | None] = {}  # submission -> code versions (None: asked)
        self._probes: dict[str, Any] = {}  # submission -> the probe's ref, held until it answers
        self._inflight: dict[str, tuple[str, str]] = {}  # key -> (submission, node) running it now
        self._keys: dict[tuple[str, str], str] = {}  # (submission, node) -> its key, once known
        self._digests: dict[tuple[str, str], dict[str, str]] = {}  # outputs' digests of CACHED nodes
        self.hits = 0
        self.coalesced = 0

    def tick(self, engine: CacheHost) -> set[str]:
        """Decide every ready cache node; returns the submissions it changed. Never raises: a failure here
        is logged and leaves the nodes waiting for the next tick (the engine loop must live)."""
        touched: set[str] = set()
        try:
            self._tick(engine, touched)
        except Exception:  # noqa: BLE001
            log.exception("fabric cache tick failed")
        return touched

    def _tick(self, engine: CacheHost, touched: set[str]) -> None:
        for key, (sid, node_id) in list(self._inflight.items()):
            run = engine.run_of(sid)
            node = run.machine.nodes[node_id] if run is not None else None
            if node is not None and not node.state.terminal:
                continue
            del self._inflight[key]  # its waiters decide again below: hit, or the next one runs
            if node is not None and node.state is NodeState.SUCCEEDED and node.attempts:
                report = node.attempts[-1].report
                self._index.put(CacheEntry(key, sid, node_id, node.plan.result_slots,
                                           dict(report.digests or {}) if report else {}, time.time()))
        for run in engine.live_runs():
            if run.machine.done:
                self._forget(run.submission_id, run)
                continue
            # One batch per run: a cached map's misses dispatched together go as packs (execute/fusion.py).
            actions: list[Action] = []
            seen: set[str] = set()
            try:
                # Until none is new: a hit may release more (a map's next children under max_parallel, a
                # downstream cache node), decided now rather than on the loop's next wake-up. Each once a tick.
                while fresh := [n for n in run.machine.ready_cached() if n not in seen]:
                    seen.update(fresh)
                    for node_id in fresh:
                        if self._decide(engine, run, node_id, actions):
                            touched.add(run.submission_id)
            finally:  # what was decided is carried out even if a later decision raised
                if actions:
                    engine.perform(run.submission_id, actions)

    def _decide(self, engine: CacheHost, run: RunView, node_id: str, actions: list[Action]) -> bool:
        sid, machine = run.submission_id, run.machine
        key = self._keys.get((sid, node_id)) or self._key(engine, run, node_id)
        if key == _PENDING:
            return False
        if key is not None:
            self._keys[(sid, node_id)] = key
            entry = self._index.get(key)
            if entry is not None and (entry.submission_id, entry.node_id) != (sid, node_id):
                # Fresh: the entry's node succeeded, so its outputs were written (a pack's maybe just now).
                if has_outputs(self._artifacts, entry.submission_id, entry.node_id, fresh=True):
                    return self._hit(engine, run, node_id, entry, actions)
                self._index.drop(key)  # its outputs were swept: the entry is stale
            leader = self._inflight.get(key)
            if leader is not None and leader != (sid, node_id):
                reason = str(Wait(WaitReason.COALESCED, f"waits for the identical node {leader[1]} of {leader[0]}"))
                if machine.nodes[node_id].reason != reason:
                    self.coalesced += 1
                    machine.hold(node_id, reason)
                    return True
                return False
            self._inflight[key] = (sid, node_id)
        if machine.gated:  # admission decides when it runs
            machine.unhold(node_id)
            return False
        actions.extend(machine.admit(node_id))
        return True

    def _hit(self, engine: CacheHost, run: RunView, node_id: str, entry: CacheEntry, actions: list[Action]) -> bool:
        machine = run.machine
        outs = machine.nodes[node_id].plan.result_slots
        hit = machine.cache_hit(node_id, f"cached: reuses {entry.node_id} of {entry.submission_id}")
        if machine.nodes[node_id].state is not NodeState.CACHED:
            return False
        token = machine.nodes[node_id].token
        assert token is not None  # CACHED: a token for the reused outputs
        sid = run.submission_id
        engine.adopt_outputs(sid, node_id, token, engine.load_outputs(entry.submission_id, entry.node_id, list(outs)))
        self._digests[(sid, node_id)] = dict(entry.digests)
        # Its artifact dir too (fire and forget: a task runs whether or not its ref is kept).
        self._copy.remote(self._artifacts, (entry.submission_id, entry.node_id), (sid, node_id))
        self.hits += 1
        actions.extend(hit)
        return True

    def _key(self, engine: CacheHost, run: RunView, node_id: str) -> str | None:
        """The node's cache key; None when it cannot be cached (an input without a digest, unknown code)."""
        versions = self._code_versions(engine, run)
        if versions is None:
            return _PENDING
        plan = run.plan.nodes[node_id]
        inputs = {}
        for wire in plan.inputs:
            if plan.item_digest is not None and wire.producer == plan.map_parent:  # a cached map's child: its item
                inputs[wire.name] = plan.item_digest
                continue
            digest = self._output_digests(run, wire.producer).get(wire.out)
            if digest is None:
                return None
            inputs[wire.name] = digest
        code = [versions.get(f"kind:{plan.kind}", "?")]
        if plan.entrypoint:
            code.append(versions.get(f"entry:{plan.entrypoint}", "?"))
        if "?" in code:
            return None
        content = node_content_hash(kind=plan.kind, params=plan.params,
                                    entrypoint=f"{plan.entrypoint}@{'/'.join(code)}",
                                    env=plan.env, image=plan.image, outs=plan.outs, inputs=inputs)
        return namespaced_key(cache_namespace(run.team, plan.cache_shared), content)

    def _output_digests(self, run: RunView, node_id: str) -> dict[str, str]:
        node = run.machine.nodes[node_id]
        if node.state is NodeState.CACHED:
            return self._digests.get((run.submission_id, node_id), {})
        if node.state is NodeState.SUCCEEDED and node.attempts and node.attempts[-1].report is not None:
            return node.attempts[-1].report.digests or {}
        return {}

    def _code_versions(self, engine: CacheHost, run: RunView) -> dict[str, str] | None:
        """Asked once per submission from a zero-CPU task in the submission's runtime_env (where its code is);
        the answer wakes the engine."""
        sid = run.submission_id
        if sid in self._versions:
            return self._versions[sid]
        self._versions[sid] = None
        nodes = [node for n in run.plan.order for node in (run.plan.nodes[n],)  # a cached map: its children's code
                 if node.cache or (node.map is not None and node.map.cache)]
        inline = sorted({n.entrypoint for n in nodes if n.entrypoint in run.code})
        entrypoints = sorted({n.entrypoint for n in nodes if n.entrypoint and n.entrypoint not in run.code})
        kinds = sorted({n.kind for n in nodes})
        # It imports the submission's modules, so it runs tenant code: never on the head (docs/security.md).
        options: dict[str, Any] = off_head({"num_cpus": 0, "max_retries": 2})
        if run.runtime_env:
            options["runtime_env"] = run.runtime_env
        ref = self._probe.options(**options).remote(entrypoints, kinds, inline, *[run.code[e] for e in inline])

        def done(result: Any) -> None:
            if isinstance(result, BaseException):
                log.warning("fabric could not read the code versions of %s: %s", sid, result,
                            extra={"submission_id": sid})
                result = {}
            # Plain strings only: the probe ran the submission's code, which may answer anything.
            self._versions[sid] = {str(k): str(v) for k, v in result.items()} if isinstance(result, dict) else {}
            self._probes.pop(sid, None)
            engine.wake(sid)

        self._probes[sid] = ref  # a ref nobody holds is freed, and its callback never comes
        ref._on_completed(done)
        return None

    def _forget(self, sid: str, run: RunView) -> None:
        self._versions.pop(sid, None)
        self._probes.pop(sid, None)
        for node_id in run.machine.nodes:  # a map's children too
            self._keys.pop((sid, node_id), None)
            self._digests.pop((sid, node_id), None)
