"""cluster.yaml's per-node commands: the head's volume is formatted and mounted on the head only, and the head can
keep its record in PostgreSQL (FABRIC_STORE); checked against the rule Ray's launcher applies."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def initialization_commands(config: dict, node_type: str) -> list[str]:
    """What Ray runs on a node's host before docker: `ray up` runs the top-level list on the head
    (autoscaler/_private/commands.py); the autoscaler runs a worker type's own list, else the top-level one
    (StandardAutoscaler._get_node_type_specific_fields)."""
    if node_type == config["head_node_type"]:
        return config["initialization_commands"]
    return config["available_node_types"][node_type].get("initialization_commands", config["initialization_commands"])


def test_only_the_head_formats_and_mounts_the_fabric_home_volume():
    config = _config()
    head = " ".join(initialization_commands(config, config["head_node_type"]))
    assert "mkfs.ext4" in head and "mount /dev/nvme1n1 /data/fabric" in head
    for node_type in config["available_node_types"]:
        if node_type == config["head_node_type"]:
            continue
        commands = " ".join(initialization_commands(config, node_type))
        assert "mkfs" not in commands and "/data/fabric" not in commands and "nvme" not in commands, node_type


def test_the_head_can_keep_its_record_in_postgresql():
    config = _config()
    start = " ".join(config["head_start_ray_commands"])
    assert "FABRIC_STORE=$(cat /data/fabric/store-url" in start and "ray start --head" in start
    assert "FABRIC_STORE" not in " ".join(config["worker_start_ray_commands"])  # only the registry reads it
    for manifest in ("raycluster.yaml", "rayservice.yaml"):
        text = (REPO / "k8s" / "base" / manifest).read_text()
        assert "name: FABRIC_STORE" in text and "secretKeyRef: {name: fabric-store, key: url, optional: true}" in text
