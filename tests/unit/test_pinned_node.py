"""Where admission's placement pins a task (execute/backend.py pinned_node): never where a custom resource that
admission does not book could be missing (found on the no-shared-disk cluster: `{w2: 1}` pinned to w1 was
refused by Ray as infeasible once admission became the default)."""

from __future__ import annotations

import pytest

from fabric.execute.backend import pinned_node
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
