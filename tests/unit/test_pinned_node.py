"""Where admission's placement pins a task (execute/backend.py pinned_node): never where a custom resource that
admission does not book could be missing (found on the no-shared-disk cluster: `{w2: 1}` pinned to w1 was
refused by Ray as infeasible once admission became the default)."""

from __future__ import annotations

import pytest

from fabric.execute.pinning import is_plain, pinned_node
from fabric.plan import ResourceUnit
from fabric.schedule.admission import Placement

pytestmark = pytest.mark.timeout(30)


def test_admission_pins_plain_and_gpu_memory_work_and_leaves_other_custom_resources_to_ray() -> None:
    placed = Placement("node-a")
    assert pinned_node(placed, ResourceUnit(num_cpus=1)) == "node-a"
    assert pinned_node(placed, ResourceUnit(num_cpus=0, num_gpus=0.5, custom={"gpu_mem_gb": 40})) == "node-a"
    assert pinned_node(placed, ResourceUnit(num_cpus=1, custom={"w2": 1})) is None
    assert pinned_node(placed, ResourceUnit(num_cpus=1, custom={"gpu_mem_gb": 40, "accelerator_x": 1})) is None
    assert pinned_node(None, ResourceUnit(num_cpus=1)) is None


def test_cpu_work_on_a_plain_cluster_is_left_to_ray_and_gpu_work_stays_pinned() -> None:
    placed = Placement("node-a")
    assert pinned_node(placed, ResourceUnit(num_cpus=1), plain_cluster=True) is None
    assert pinned_node(placed, ResourceUnit(num_cpus=1, num_gpus=0.25), plain_cluster=True) == "node-a"
    assert pinned_node(placed, ResourceUnit(num_cpus=1, custom={"gpu_mem_gb": 8}), plain_cluster=True) == "node-a"


def test_a_cluster_with_a_pool_or_spot_node_is_not_plain() -> None:
    cpu = {"Alive": True, "Resources": {"CPU": 4.0, "node:10.0.0.1": 1.0}}
    assert is_plain([cpu, {**cpu, "Resources": {"CPU": 2.0, "GPU": 4.0}}])
    assert not is_plain([cpu, {"Alive": True, "Resources": {"CPU": 2.0, "pool:cpu-spot": 1000.0}}])
    assert not is_plain([cpu, {"Alive": True, "Resources": {"CPU": 2.0, "spot": 1.0}}])
    assert is_plain([cpu, {"Alive": False, "Resources": {"CPU": 2.0, "spot": 1.0}}])
