"""Admission at O(changes): the waitlist keeps queue order as nodes come and go, a round looks only
at the runs that changed and stops where the cluster is full, the eager release never passes over a node that
ranks before it, and the default scheduling config is read under a scheduling file."""

from __future__ import annotations

import pytest

from fabric.plan import compile_plan
from fabric.schedule.admission import Gpu, Node, PoolLimit, Request
from fabric.schedule.queue import AdmissionQueue, SchedulingConfig, load_config
from fabric.schedule.quota import Budget
from fabric.schedule.run import RunMachine
from fabric.schedule.waitlist import Entry, Waitlist
from fabric.spec import Priority, load_spec
from fabric.types import AttemptReport

pytestmark = pytest.mark.timeout(60)


def run(name: str, clock, width: int, priority: str = "normal", gpu: float = 0.0, pool: str | None = None,
        ) -> RunMachine:
    node = {"kind": "python_task", "entrypoint": "m:f", "resources": {"cpu": 1, "gpu": gpu},
            **({"pool": pool} if pool else {})}
    spec = load_spec({"version": 1, "pipeline_id": name, "slo": {"priority": priority},
                      "nodes": [{"id": f"n{i}", **node} for i in range(width)]})
    machine = RunMachine(compile_plan(spec), clock, submission_id=name, gated=True)
    machine.start()
    return machine


def test_the_waitlist_keeps_queue_order_as_requests_come_and_go():
    waitlist = Waitlist(aging_s=100.0)
    for key, priority, at in (("a", Priority.NORMAL, 1.0), ("b", Priority.HIGH, 2.0), ("c", Priority.NORMAL, 0.5),
                              ("d", Priority.LOW, 0.0)):
        waitlist.add(Entry(Request(key, "t", priority, at, cpu=2.0), "s", key, None), now=3.0)
    assert [r.key for r in waitlist.requests()] == ["b", "c", "a", "d"]
    waitlist.remove("c")
    assert list(waitlist.in_order()) == ["b", "a", "d"] and waitlist.min_cpu == 2.0
    aged = Waitlist(aging_s=100.0)
    aged.add(Entry(Request("old", "t", Priority.LOW, 0.0), "s", "old", None), now=0.0)
    aged.add(Entry(Request("new", "t", Priority.NORMAL, 150.0), "s", "new", None), now=150.0)
    assert list(aged.in_order()) == ["new", "old"]
    aged.reorder(now=200.0)  # old waited 200 s: two aging steps, low -> high, above the new normal one
    assert list(aged.in_order()) == ["old", "new"]


def test_a_round_looks_only_at_changed_runs_and_is_skipped_when_nothing_changed():
    now = [1000.0]
    nodes = [Node("n0", 2.0)]
    queue = AdmissionQueue(SchedulingConfig(eager_depth=0), lambda: now[0], nodes=lambda: nodes, refresh_s=0.0)
    big = run("big", lambda: now[0], 50)
    admitted = queue.admit([("big", big, None)])
    assert len(admitted) == 2 and len(big.waiting()) == 50  # the engine admits them in the machine
    for _, node_id, _ in admitted:
        big.admit(node_id)
    decided = queue.last
    assert queue.admit([]) == [] and queue.last is decided  # nothing changed: no round at all
    finished = admitted[0][1]
    big.on_result(finished, big.nodes[finished].token, AttemptReport())
    queue.on_transitions("big", big.drain_transitions(), big)  # its capacity comes back
    again = queue.admit([("big", big, None)])
    assert len(again) == 1 and again[0][1] not in {n for _, n, _ in admitted}
    assert len(queue.booked_keys()) == 2


def test_a_later_high_priority_node_goes_before_the_queued_ones_when_capacity_frees():
    now = [1000.0]
    nodes = [Node("n0", 1.0)]
    queue = AdmissionQueue(SchedulingConfig(eager_depth=0), lambda: now[0], nodes=lambda: nodes, refresh_s=0.0)
    low = run("low", lambda: now[0], 20, "low")
    [(_, first, _)] = queue.admit([("low", low, None)])
    low.admit(first)
    now[0] += 1
    high = run("high", lambda: now[0], 1, "high")
    assert queue.admit([("high", high, None)]) == []
    low.on_result(first, low.nodes[first].token, AttemptReport())
    queue.on_transitions("low", low.drain_transitions(), low)
    assert [(sid, node) for sid, node, _ in queue.admit([("low", low, None)])] == [("high", "n0")]


def test_eager_release_is_bounded_takes_only_the_head_of_the_queue_and_never_gpu_or_limited_pool_work():
    now = [1000.0]
    nodes = [Node("n0", 2.0, [Gpu(0)])]
    queue = AdmissionQueue(SchedulingConfig(eager_depth=3), lambda: now[0], nodes=lambda: nodes, refresh_s=0.0)
    cpu = run("cpu", lambda: now[0], 10)
    admitted = queue.admit([("cpu", cpu, None)])
    placed = [p for _, _, p in admitted]
    assert len(admitted) == 5  # two placed by the policy, three released ahead of capacity (Ray places them)
    assert sum(p is not None for p in placed) == 2 and placed.count(None) == 3
    for _, node_id, _ in admitted:
        cpu.admit(node_id)
    assert queue.admit([("cpu", cpu, None)]) == []  # the eager depth is used up
    now[0] += 1
    gpu = run("gpu", lambda: now[0], 3, "high", gpu=1.0)
    gpu_admitted = queue.admit([("gpu", gpu, None)])
    assert all(p is not None for _, _, p in gpu_admitted)  # GPU work is only ever placed by the policy

    limited = AdmissionQueue(SchedulingConfig(eager_depth=8, pools={"batch": PoolLimit(50)}), lambda: now[0],
                             nodes=lambda: [Node("n0", 1.0, [], "batch")], refresh_s=0.0)
    batch = run("batch", lambda: now[0], 5, pool="batch")
    assert [p is not None for _, _, p in limited.admit([("batch", batch, None)])] == [True]


def test_eager_release_books_the_team_quota_and_stops_where_it_holds():
    now = [1000.0]
    config = SchedulingConfig(eager_depth=10, quotas={"research": Budget(cpu=3)})
    queue = AdmissionQueue(config, lambda: now[0], nodes=lambda: [Node("n0", 1.0)], refresh_s=0.0)
    research = run("r", lambda: now[0], 10)
    assert len(queue.admit([("r", research, "research")])) == 3  # 1 placed + 2 eager: the team's 3 CPUs
    assert queue.quotas()[0]["cpu_in_use"] == 3


def test_the_default_config_is_read_under_a_scheduling_file(tmp_path):
    path = tmp_path / "scheduling.yaml"
    path.write_text("aging_s: 60\npools: {batch: {max_concurrency: 2}}\nquotas: {research: {gpu: 1}}\n")
    config = load_config(path)
    assert config is not None and config.aging_s == 60
    assert config.pools is not None and config.pools["batch"].max_concurrency == 2
    assert config.pools["backtest"].max_concurrency == 20  # the default's families stay
    assert config.quotas == {"research": Budget(gpu=1)} and config.default_quota is not None
    assert "training" in config.families
    path.write_text("pools: [oops]\n")
    with pytest.raises(Exception, match="scheduling config"):
        load_config(path)


def test_a_run_tells_the_queue_only_what_changed_in_its_waiting_nodes():
    now = [1000.0]
    machine = run("wide", lambda: now[0], 5)
    assert sorted(machine.waiting_changes()) == [(f"n{i}", True) for i in range(5)]
    assert machine.waiting_changes() == []  # nothing since
    machine.admit("n1")
    machine.hold("n3", "coalesced")
    assert sorted(machine.waiting_changes()) == [("n1", False), ("n3", False)]
    machine.unhold("n3")
    assert machine.waiting_changes() == [("n3", True)]
    # The queue follows the run by its changes: admitted and held nodes leave the waitlist, no rescan.
    queue = AdmissionQueue(SchedulingConfig(eager_depth=0), lambda: now[0], nodes=lambda: [Node("c", 0.0)],
                           refresh_s=0.0)
    other = run("other", lambda: now[0], 4)
    queue.admit([("other", other, None)])
    other.admit("n0")
    other.hold("n2", "coalesced")
    queue.admit([("other", other, None)])
    assert [e.node_id for e in queue._waitlist.entries()] == ["n1", "n3"]
