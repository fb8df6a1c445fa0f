"""cluster.yaml for `ray up`: checked offline by Ray's own config code, and run as a local twin on Ray's
fake_multinode provider, where queued GPU work for a pool makes a node of that type appear and
idleness removes it."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fabric.schedule.config import DEFAULT_CONFIG
from tests.conftest import ray_head_process

REPO = Path(__file__).resolve().parents[2]
FAKE_DEFAULTS = {  # every top-level field, so the autoscaler needs no defaults file (the wheel lacks it)
    "upscaling_speed": 1.0, "docker": {}, "initialization_commands": [], "setup_commands": [],
    "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [], "auth": {}}

pytestmark = pytest.mark.timeout(240)


def cluster_config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_own_config_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = cluster_config()
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    types = prepared["available_node_types"]
    workers = {name: spec for name, spec in types.items() if name != prepared["head_node_type"]}
    assert set(workers) == {"cpu", "cpu-spot", "gpu-spot", "gpu"}  # the default scheduling config's node pools
    pools = yaml.safe_load(DEFAULT_CONFIG.read_text())["pools"]
    for name, spec in workers.items():
        assert spec["min_workers"] == 0, f"{name} must scale to zero"
        assert spec["resources"].get(f"pool:{name}", 0) >= 1, f"{name} must advertise its pool resource"
        families = {f for f, family in pools.items() if name in (family or {}).get("runs_on", [])}
        assert {r.split(":", 1)[1] for r in spec["resources"] if r.startswith("pool:")} == {name, *families}
    assert types["head"]["resources"]["CPU"] == 0  # user work never lands on the head
    assert "MarketType" in str(types["gpu-spot"]["node_config"]) and "MarketType" not in str(types["cpu"])
    assert "MarketType" not in str(types["gpu"]["node_config"]) and types["gpu"]["resources"]["GPU"] >= 1

    broken = copy.deepcopy(config)
    broken["available_node_types"]["cpu"]["max_worker"] = broken["available_node_types"]["cpu"].pop("max_workers")
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(broken))


def twin_config(gcs_port: int) -> dict:
    """The same worker types with Ray's fake_multinode provider: node_config dropped, the head type
    renamed as the provider wants, sizes small enough for this machine."""
    config = cluster_config()
    types = {}
    for name, spec in config["available_node_types"].items():
        if name == config["head_node_type"]:
            types["ray.head.default"] = {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}
        else:
            resources = {**spec["resources"], "CPU": 1}
            types[name] = {"resources": resources, "node_config": {}, "min_workers": 0, "max_workers": 1}
    return {**FAKE_DEFAULTS, "cluster_name": "fabric-twin", "max_workers": 2, "idle_timeout_minutes": 0.1,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
            "available_node_types": types, "head_node_type": "ray.head.default"}


DRIVER = r"""
import json, sys, time
import ray
import fabric as fb

client = fb.connect(sys.argv[1])
alive = lambda: sorted(n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"])
spec = {"version": 1, "pipeline_id": "gpu_pool", "nodes": [
    {"id": "train", "kind": "python_task", "entrypoint": "tests.nodes:sleeper", "pool": "gpu-spot",
     "params": {"seconds": 3}, "resources": {"gpu": 1, "cpu": 1}}]}
started = time.monotonic()
before = alive()
submission = client.submit(spec)
appeared = None
while time.monotonic() - started < 120:
    if appeared is None and any(alive()):
        appeared = time.monotonic() - started
    if submission.status().done:
        break
    time.sleep(0.5)
state = str(submission.status().state)
finished = time.monotonic() - started
gone = None
while time.monotonic() - started < 200:
    if not any(alive()):
        gone = time.monotonic() - started
        break
    time.sleep(1)
print(json.dumps({"before": before, "appeared_s": appeared, "state": state, "finished_s": finished,
                  "gone_s": gone}))
"""


@pytest.mark.ray
@pytest.mark.timeout(300)
@pytest.mark.parametrize("admission", [
    pytest.param("eager", marks=pytest.mark.skipif(
        os.environ.get("FABRIC_TEST_EAGER_TWIN") != "1",
        reason="about 45 s: eager dispatch (not the default) leaves the demand to Ray's own pending tasks; opt in "
               "with FABRIC_TEST_EAGER_TWIN=1")),
    "admission"])
def test_the_local_twin_grows_for_queued_gpu_work_and_shrinks_when_idle(tmp_path, admission):
    """Admission (the default): the fabric holds the node (no node of its pool yet) and asks the autoscaler with
    request_resources. Eager: the node is in Ray at once, Ray's pending task is the demand."""
    from tests.conftest import free_port

    gcs_port = free_port()
    config = tmp_path / "twin.yaml"
    config.write_text(yaml.safe_dump(twin_config(gcs_port)))
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "FABRIC_SKIP_FEASIBILITY": "1",
           "FABRIC_ADMISSION": "1" if admission == "admission" else "0"}
    with ray_head_process(tmp_path, num_cpus=0, extra_env=env, autoscaling_config=config,
                          port=gcs_port) as (address, client_env, _):
        run = subprocess.run([sys.executable, "-c", DRIVER, address], cwd=REPO, env=client_env,
                             capture_output=True, text=True, timeout=260)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"twin ({admission}): GPU node appeared after {report['appeared_s']:.1f}s, DAG {report['state']} after "
          f"{report['finished_s']:.1f}s, node gone after {report['gone_s']}s")
    assert report["before"] == [0.0], "the twin starts with the head only"
    assert report["appeared_s"] is not None and report["state"] == "SUCCEEDED"
    assert report["gone_s"] is not None, "the idle GPU node was not removed"
