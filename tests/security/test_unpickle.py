"""Nothing a node sends is unpickled by the control plane beyond plain data (fabric/execute/untrusted.py): a payload
that runs code when unpickled, sent every way a node can, runs nowhere in the registry, a quota actor or the head
sink. Serialize with the other Ray tests: `flock /tmp/fabric-ray.lock pytest tests/security/test_unpickle.py`."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def dag(name: str, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": 1, "pipeline_id": name, "slo": {"retry": {"max_attempts": 1}}, "nodes": nodes}


def node(node_id: str, entrypoint: str, **params: Any) -> dict[str, Any]:
    return {"id": node_id, "kind": "python_task", "entrypoint": entrypoint, "params": params,
            "resources": {"cpu": "100m"}}


def ray_get(ref: Any) -> Any:
    import ray

    return ray.get(ref, timeout=60)


def test_a_node_cannot_make_the_control_plane_unpickle_its_bytes(client, fabric_home, tmp_path):
    """A payload whose unpickling writes a marker: as the node's error, as its report (object or pickle bytes), as
    an argument of the registry's, a quota actor's and the head sink's methods, and as a chain report's items."""
    from fabric.actors.quota import get_or_create_quota_actor
    from fabric.execute.sink import _sink, sink_name

    markers = tmp_path / "markers"
    markers.mkdir()
    registry_pid = ray_get(client._registry.pid.remote())
    get_or_create_quota_actor("victims", key_file=str(fabric_home / "control.key"))
    artifacts = str(fabric_home / "artifacts")
    _sink(str(fabric_home), artifacts, "fabric")
    where = str(markers)
    run = client.submit(dag("unpickle", [
        node("error", "tests.security.attacks:evil_error", marker_dir=where),
        node("report", "tests.security.attacks:evil_report", marker_dir=where),
        node("report_bytes", "tests.security.attacks:evil_report", marker_dir=where, raw=True),
        node("calls", "tests.security.attacks:evil_calls", marker_dir=where, quota_team="victims",
             sink=sink_name(str(fabric_home), artifacts)),
    ]), {"team": "attackers"})
    status = run.wait(120)
    assert sorted(p.name for p in markers.iterdir()) == [], "a control-plane process ran the node's payload"
    for name in ("error", "report", "report_bytes"):
        failed = status.node(name)
        assert failed.state == "FAILED" and failed.error is not None, (name, failed)
        assert failed.error.type == "UNSAFE_PAYLOAD" and "refused" in failed.error.message, (name, failed.error)
    assert status.node("calls").state == "SUCCEEDED", run.logs("calls")
    seen = run.result("calls")
    assert set(seen) == {"status_arg", "progress_arg", "chain_report_pickle", "quota_arg", "sink_arg"}, seen
    assert all(outcome.startswith("refused") for outcome in seen.values()), seen
    assert "UnsafePayload" in seen["status_arg"] or "UNSAFE_PAYLOAD" in seen["status_arg"] \
        or "RaySystemError" in seen["status_arg"], seen
    assert ray_get(client._registry.pid.remote()) == registry_pid  # the same registry, alive and unharmed
    assert client.list(limit=1) and not list(markers.iterdir())


def test_a_driver_opens_another_teams_values_as_plain_data_only(client, tmp_path):
    """`result()` of a submission that is neither this driver's nor its team's is opened in a worker and rebuilt here
    as plain data: a value that runs code when unpickled is refused (UNSAFE_PAYLOAD), and runs nowhere here."""
    import os

    from fabric.errors import ErrorCode, FabricError

    markers = tmp_path / "values"
    markers.mkdir()
    run = client.submit(dag("values", [node("evil", "tests.security.attacks:evil_value", marker_dir=str(markers)),
                                       node("plain", "tests.nodes:value", x=2.0)]), {"team": "attackers"})
    assert run.wait(120).state == "SUCCEEDED", run.logs("evil")
    foreign = client.get(run.id)  # this driver did not submit it (as far as the handle knows): another team's
    assert foreign.result("plain") == 2.0
    with pytest.raises(FabricError) as refused:
        foreign.result("evil")
    assert refused.value.code is ErrorCode.UNSAFE_PAYLOAD and "attackers" in refused.value.message
    assert f"pwned-{os.getpid()}" not in [p.name for p in markers.iterdir()]  # opened in a worker, never here
    with pytest.raises(FabricError) as hidden:
        client.for_team("others").get(run.id)
    assert hidden.value.code is ErrorCode.NOT_FOUND
    assert client.for_team("attackers").get(run.id).result("plain") == 2.0  # its own team's: as it is
