"""The control key and what is derived from it; where tenant work may run (no Ray needed)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fabric.capability import (
    attempt_grant,
    attempt_proof,
    check,
    control_cap,
    load_or_create_key,
    proof,
    quota_cap,
    read_key,
)
from fabric.errors import ErrorCode, FabricError
from fabric.execute.backend import head_to_avoid
from fabric.execute.pinning import tenant_custom

pytestmark = pytest.mark.timeout(30)


def test_the_key_is_made_once_private_and_racing_makers_agree(tmp_path: Path) -> None:
    path = tmp_path / "home" / "control.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_key(path) == keys[0] and load_or_create_key(path) == keys[0]
    assert [p.name for p in path.parent.iterdir()] == ["control.key"]  # no temp file left behind


def test_derived_values_are_distinct_and_bound_to_their_scope() -> None:
    key, other = b"k" * 32, b"o" * 32
    values = {control_cap(key), quota_cap(key), attempt_grant(key, "s", "n", 1), attempt_grant(key, "s", "n", 2),
              attempt_grant(key, "s", "m", 1), attempt_grant(key, "t", "n", 1), proof(key, "fabric-registry", "x"),
              proof(key, "fabric-quota:a", "x"), control_cap(other)}
    assert len(values) == 9
    assert attempt_proof(attempt_grant(key, "s", "n", 1), "x") != attempt_proof(attempt_grant(other, "s", "n", 1), "x")


@pytest.mark.parametrize("given", [None, "", "0" * 64, b"bytes", 42, control_cap(b"o" * 32)])
def test_check_refuses_anything_but_the_capability(given: object) -> None:
    with pytest.raises(FabricError) as caught:
        check(control_cap(b"k" * 32), given, "the registry's submit")
    assert caught.value.code == ErrorCode.FORBIDDEN and "submit" in caught.value.message
    check(control_cap(b"k" * 32), control_cap(b"k" * 32), "the registry's submit")


def test_a_bad_key_file_is_refused_not_used(tmp_path: Path) -> None:
    (tmp_path / "control.key").write_text("short\n")
    with pytest.raises(FabricError, match="not a fabric key"):
        load_or_create_key(tmp_path / "control.key")


def _node(node_id: str, head: bool = False, alive: bool = True) -> dict:
    resources = {"CPU": 1.0, **({"node:__internal_head__": 1.0} if head else {})}
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


def test_tenant_work_avoids_the_head_only_while_another_node_is_alive() -> None:
    assert head_to_avoid([_node("h", head=True), _node("w")]) == "h"
    assert head_to_avoid([_node("h", head=True)]) is None  # one node: nowhere else (docs/security.md)
    assert head_to_avoid([_node("h", head=True), _node("w", alive=False)]) is None
    assert head_to_avoid([_node("w")]) is None


def test_rays_node_placement_keys_never_reach_ray() -> None:
    assert tenant_custom({"node:__internal_head__": 0.001, "node:10.0.0.1": 1, "pool:batch": 1, "gpu_mem_gb": 8}) \
        == {"pool:batch": 1, "gpu_mem_gb": 8}
