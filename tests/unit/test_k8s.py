"""k8s/ manifests against the KubeRay CRDs, and fabric.k8s / `fabric k8s` against a fake Kubernetes API."""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fabric.errors import ErrorCode, FabricError
from fabric.k8s import MAX_RAYJOB_NAME, KubeRay, is_dns1035, rayjob_for_dag
from fabric.k8s_validate import check_manifest
from fabric.spec import load_spec
from tests.fake_kube import FakeKube

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DAG = REPO / "jobs" / "dags" / "quant_backtest.yaml"
POOLS = ["cpu", "cpu-spot", "gpu-spot", "gpu"]


@pytest.fixture(scope="module")
def check() -> Callable[[Any], list[str]]:
    """fabric.k8s_validate.check_manifest: [] for a valid manifest, else "path: message" strings."""
    return check_manifest


def run_validator(*paths: Path | str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fabric.k8s_validate", *map(str, paths)], cwd=REPO,
                          capture_output=True, text=True, timeout=50)


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def clusters() -> list[tuple[str, dict[str, Any]]]:
    """The cluster specs of the base: the RayCluster's and the RayService's."""
    rc, = docs(K8S / "base" / "raycluster.yaml")
    rs, = docs(K8S / "base" / "rayservice.yaml")
    return [("RayCluster/fabric", rc["spec"]), ("RayService/fabric-gateway", rs["spec"]["rayClusterConfig"])]


# --------------------------------------------------------------------------- the manifests


def test_every_manifest_passes_the_validator():
    result = run_validator(K8S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    for expected in ("RayCluster/fabric", "RayService/fabric-gateway", "RayJob/quant-backtest-v1",
                     "PersistentVolumeClaim/fabric-home", "Namespace/fabric-dev"):
        assert f" {expected}" in result.stdout, result.stdout


def test_the_validator_fails_a_broken_copy(tmp_path):
    broken = tmp_path / "raycluster.yaml"
    broken.write_text((K8S / "base" / "raycluster.yaml").read_text().replace("minReplicas:", "minReplica:", 1))
    result = run_validator(broken)
    assert result.returncode == 1
    assert "FAIL" in result.stdout and 'did you mean "minReplicas"' in result.stdout


def families_on(node_type: str) -> list[str]:
    """The queue families the default scheduling config says run on `node_type`."""
    import yaml

    from fabric.schedule.config import DEFAULT_CONFIG

    pools = yaml.safe_load(DEFAULT_CONFIG.read_text())["pools"]
    return [name for name, spec in pools.items() if node_type in (spec or {}).get("runs_on", [])]


def test_the_default_scheduling_config_has_a_pool_per_node_type_and_the_queue_families():
    import yaml

    from fabric.schedule.config import DEFAULT_CONFIG
    from fabric.schedule.queue import load_config

    pools = yaml.safe_load(DEFAULT_CONFIG.read_text())["pools"]
    assert sorted(name for name, spec in pools.items() if not (spec or {}).get("runs_on")) == sorted(POOLS)
    config = load_config(REPO / "no-such-scheduling.yaml")
    assert config is not None and config.families == {"backtest", "training", "ml", "agents", "factors", "rag"}
    assert {name: limit.max_concurrency for name, limit in (config.pools or {}).items()} == {"backtest": 20,
                                                                                            "agents": 12}
    assert config.default_quota is not None and config.default_quota.gpu == 8
    assert all(set(spec["runs_on"]) <= set(POOLS) for spec in pools.values() if spec and "runs_on" in spec)
    assert load_config(REPO / "no-such-scheduling.yaml", admission=False) is None
    assert load_config(DEFAULT_CONFIG, admission=False) is None  # FABRIC_ADMISSION=0 wins over a file


@pytest.mark.parametrize(("what", "spec"), clusters())
def test_cluster_head_pools_and_autoscaling(what, spec):
    from fabric.plan.compile import POOL_RESOURCE_PREFIX

    assert spec["enableInTreeAutoscaling"] is True and spec["rayVersion"] == "2.60.0"
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    container = head["template"]["spec"]["containers"][0]
    assert {"name": "FABRIC_HOME", "value": "/data/fabric"} in container["env"]
    mount, = (m for m in container["volumeMounts"] if m["mountPath"] == "/data/fabric")
    volume, = (v for v in head["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    claims = {d["metadata"]["name"] for d in docs(K8S / "base" / "pvc.yaml")}
    assert volume["persistentVolumeClaim"]["claimName"] in claims
    groups = spec["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == POOLS  # the overlays patch them by index
    for group in groups:
        pool = group["groupName"]
        assert group["minReplicas"] == 0 and group["maxReplicas"] > 0
        # Parsed the way Ray's KubeRay autoscaler reads it: drop the outer quotes and the backslashes.
        raw = group["rayStartParams"]["resources"]
        # its own pool, and the queue families the default scheduling config runs on it
        assert json.loads(raw[1:-1].replace("\\", "")) == {f"{POOL_RESOURCE_PREFIX}{p}": 1000
                                                            for p in [pool, *families_on(pool)]}
        assert group["labels"] == {"fabric.io/pool": pool}
        pod = group["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == pool.startswith("gpu")
        assert ("nodeSelector" in pod and "tolerations" in pod) == pool.endswith("-spot")


def test_rayservice_runs_the_gateway_of_serve_config():
    from ray.serve.schema import ServeDeploySchema

    service, = docs(K8S / "base" / "rayservice.yaml")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    reference = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())["applications"][0]
    app, = config["applications"]
    assert app["import_path"] == reference["import_path"]
    assert [d["name"] for d in app["deployments"]] == [d["name"] for d in reference["deployments"]]
    assert app["runtime_env"]["env_vars"]["FABRIC_HOME"] == "/data/fabric"
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    tokens_dir = str(Path(app["args"]["tokens_file"]).parent)
    mount, = (m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == tokens_dir)
    volume, = (v for v in head["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "fabric-tokens"


# --------------------------------------------------------------------------- kustomize, rendered minimally


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) and last != "-" else last
        if op["op"] == "test":
            assert node[key] == op["value"], f"test failed at {op['path']}: {node[key]!r} != {op['value']!r}"
        elif op["op"] == "replace":
            assert key in node if isinstance(node, dict) else key < len(node), f"nothing at {op['path']}"
            node[key] = op["value"]
        elif op["op"] == "add":
            node.append(op["value"]) if key == "-" else (
                node.insert(key, op["value"]) if isinstance(node, list) else node.__setitem__(key, op["value"]))
        elif op["op"] == "remove":
            del node[key]
        else:
            raise AssertionError(f"op {op['op']} is not rendered by this test")


def _merge(doc: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            _merge(doc[key], value)
        else:
            doc[key] = value


def render(directory: Path) -> list[dict[str, Any]]:
    """What `kustomize build` makes of the features these kustomizations use (no kustomize binary here)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    out: list[dict[str, Any]] = []
    for ref in kustomization.get("resources", []):
        target = directory / ref
        out.extend(render(target) if target.is_dir() else docs(target))
    for patch in kustomization.get("patches", []):
        body = yaml.safe_load((directory / patch["path"]).read_text())
        selector = patch["target"]
        matched = [d for d in out if d["kind"] == selector["kind"]
                   and selector.get("name", d["metadata"]["name"]) == d["metadata"]["name"]
                   and d["apiVersion"] == "/".join(filter(None, (selector.get("group"), selector.get("version"))))]
        assert matched, f"{directory.name}: patch {patch['path']} targets nothing in its resources ({selector})"
        for doc in matched:
            _json_patch(doc, body) if isinstance(body, list) else _merge(doc, body)
    for labels in kustomization.get("labels", []):
        for doc in out:
            doc["metadata"].setdefault("labels", {}).update(labels["pairs"])
    if namespace := kustomization.get("namespace"):
        for doc in out:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = namespace
    ids = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in out]
    assert len(ids) == len(set(ids)), f"{directory}: duplicate resources {ids}"
    return out


def _groups(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = doc["spec"].get("rayClusterConfig", doc["spec"])
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod", "trust-domains"])
def test_rendered_overlays_are_valid(overlay, check):
    rendered = render(K8S / overlay)
    for doc in rendered:
        assert check(doc) == [], (doc["kind"], doc["metadata"]["name"], check(doc))
    rays = [d for d in rendered if d["kind"] in ("RayCluster", "RayService")]
    namespaces = {d["metadata"]["name"] for d in rendered if d["kind"] == "Namespace"}
    assert rays and all(d["metadata"]["namespace"] in namespaces for d in rays)
    if overlay == "overlays/dev":
        for doc in rays:
            assert _groups(doc)["gpu-spot"]["maxReplicas"] == 0
            assert max(g["maxReplicas"] for g in _groups(doc).values()) <= 2
    if overlay == "overlays/prod":
        assert {d["spec"]["resources"]["requests"]["storage"] for d in rendered
                if d["kind"] == "PersistentVolumeClaim"} == {"200Gi"}
        assert all(_groups(d)["gpu-spot"]["maxReplicas"] > 0 for d in rays)
    if overlay == "trust-domains":
        per_domain = [d["metadata"]["namespace"] for d in rays if d["kind"] == "RayCluster"]
        assert len(per_domain) == len(set(per_domain)) == 2


# --------------------------------------------------------------------------- rayjob_for_dag


def test_rayjob_for_the_example_dag(check):
    manifest = rayjob_for_dag(DAG, runtime_params={"labels": {"owner": "me"}, "submission_id": "sub-1"})
    assert check(manifest) == []
    name = manifest["metadata"]["name"]
    assert is_dns1035(name) and len(name) <= MAX_RAYJOB_NAME and name.startswith("quant-backtest-v1-")
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.run_dag"]
    assert json.loads(argv[3]) == load_spec(DAG).to_dict()
    assert argv[4] == "--params" and json.loads(argv[5]) == {"labels": {"owner": "me"}, "submission_id": "sub-1"}
    spec = manifest["spec"]
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"] == "cpu"
    # One submission id, one RayJob name: a resubmission is a 409, not a second run.
    assert rayjob_for_dag(DAG, runtime_params={"submission_id": "sub-1"})["metadata"]["name"] == name
    assert rayjob_for_dag(DAG)["metadata"]["name"] != rayjob_for_dag(DAG)["metadata"]["name"]


def test_the_entrypoint_survives_the_shells_on_its_way(tmp_path):
    spec = load_spec(DAG).to_dict()
    spec["pipeline_id"] = "Q" + "x" * 120  # a long id, capitals: the name must still be a short DNS label
    spec["nodes"][0]["params"]["note"] = "it's $HOME `date` \"quoted\" \\n ünï"
    manifest = rayjob_for_dag(spec)
    assert len(manifest["metadata"]["name"]) <= MAX_RAYJOB_NAME and is_dns1035(manifest["metadata"]["name"])
    # KubeRay runs `ray job submit -- <entrypoint>` in bash; Ray re-joins argv with shlex.join and runs it in sh.
    printed = manifest["spec"]["entrypoint"].replace("python -m jobs.run_dag", "printf '%s\\n'", 1)
    once = subprocess.run(["bash", "-c", printed], capture_output=True, text=True, check=True).stdout
    twice = subprocess.run(["sh", "-c", "printf '%s\\n' " + shlex.join(once.splitlines())],
                           capture_output=True, text=True, check=True).stdout
    assert json.loads(twice.splitlines()[0]) == load_spec(spec).to_dict()


def test_rayjob_on_an_existing_cluster_and_the_template(check):
    manifest = rayjob_for_dag(DAG, cluster="fabric", name="my-run")
    assert check(manifest) == [] and manifest["metadata"]["name"] == "my-run"
    assert manifest["spec"]["clusterSelector"] == {"ray.io/cluster": "fabric"}
    assert "rayClusterSpec" not in manifest["spec"] and "ttlSecondsAfterFinished" not in manifest["spec"]
    with pytest.raises(FabricError) as caught:
        rayjob_for_dag(DAG, name="Not_A_Label")
    assert caught.value.code == ErrorCode.SPEC_FIELD

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()}
        return [shape(v) for v in value] if isinstance(value, list) else type(value).__name__

    template, = docs(K8S / "rayjob-template.yaml")
    assert shape(template["spec"]) == shape(rayjob_for_dag(DAG)["spec"]), "k8s/rayjob-template.yaml drifted"


@pytest.fixture
def fake(check) -> Iterator[FakeKube]:
    server = FakeKube(check)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        with server.cond:
            server.closing = True
            server.cond.notify_all()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def kuberay(fake) -> Iterator[KubeRay]:
    from kubernetes import client

    api_client = client.ApiClient(client.Configuration(host=fake.url))
    yield KubeRay("team-a", api_client=api_client, request_timeout_s=10)
    with contextlib.suppress(Exception):
        api_client.close()


def test_rayjob_create_get_list_delete(fake, kuberay):
    manifest = rayjob_for_dag(DAG, namespace="team-a")
    created = kuberay.create_rayjob(manifest)
    name = manifest["metadata"]["name"]
    assert created["metadata"]["name"] == name and created["metadata"]["uid"]
    assert fake.queries[0]["fieldValidation"] == ["Strict"]
    assert ("rayjobs", "team-a", name) in fake.objects
    assert kuberay.get_rayjob(name)["spec"] == manifest["spec"]
    other = kuberay.create_rayjob(rayjob_for_dag(DAG, namespace="team-a"))
    assert {j["metadata"]["name"] for j in kuberay.list_rayjobs()} == {name, other["metadata"]["name"]}
    assert len(kuberay.list_rayjobs("app.kubernetes.io/managed-by=fabric")) == 2
    assert kuberay.list_rayjobs("app.kubernetes.io/managed-by=someone-else") == []
    with pytest.raises(FabricError) as caught:
        kuberay.create_rayjob(manifest)
    assert caught.value.code == ErrorCode.IDEMPOTENCY_CONFLICT and "already exists" in caught.value.message
    kuberay.delete_rayjob(name)
    assert [j["metadata"]["name"] for j in kuberay.list_rayjobs()] == [other["metadata"]["name"]]
    for call in (kuberay.get_rayjob, kuberay.delete_rayjob):
        with pytest.raises(FabricError) as caught:
            call(name)
        assert caught.value.code == ErrorCode.NOT_FOUND and "not found" in caught.value.message


def test_an_invalid_payload_is_refused_with_the_field(fake, kuberay):
    manifest = rayjob_for_dag(DAG, namespace="team-a")
    manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplica"] = 1
    with pytest.raises(FabricError) as caught:
        kuberay.create_rayjob(manifest)
    assert caught.value.code == ErrorCode.SPEC_INVALID
    assert "minReplica" in str(caught.value) and 'did you mean "minReplicas"' in str(caught.value)
    assert any("workerGroupSpecs[0].minReplica" in p.where for p in caught.value.problems)
    assert fake.objects == {}


def test_watch_yields_the_status_the_cluster_reports(fake, kuberay):
    name = kuberay.create_rayjob(rayjob_for_dag(DAG, namespace="team-a"))["metadata"]["name"]
    done = {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}
    steps = [{"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}, done]
    timer = threading.Timer(0.3, lambda: [fake.set_status("rayjobs", "team-a", name, s) for s in steps])
    timer.start()
    started = time.monotonic()
    seen = list(kuberay.watch_rayjob(name, timeout_s=20))
    timer.join()
    assert seen[0] == {} and seen[-1] == done and steps[0] in seen
    assert time.monotonic() - started < 10, "the watch should end when the job is Complete"
    assert list(kuberay.watch_rayjob(name, timeout_s=5)) == [done]  # already finished: one event, then done
    with pytest.raises(FabricError) as caught:
        list(kuberay.watch_rayjob("missing", timeout_s=5))
    assert caught.value.code == ErrorCode.NOT_FOUND


def test_raycluster_of_the_base_through_the_fake(fake, kuberay):
    cluster, = docs(K8S / "base" / "raycluster.yaml")
    assert kuberay.create_raycluster(cluster)["metadata"]["namespace"] == "team-a"
    assert [c["metadata"]["name"] for c in kuberay.list_rayclusters()] == ["fabric"]
    assert kuberay.get_raycluster("fabric")["spec"] == cluster["spec"]
    kuberay.delete_raycluster("fabric")
    assert kuberay.list_rayclusters() == []
    with pytest.raises(FabricError) as caught:
        kuberay.create_raycluster(rayjob_for_dag(DAG))
    assert caught.value.code == ErrorCode.SPEC_FIELD


def test_an_unreachable_api_server():
    from kubernetes import client

    with FakeKube(lambda _: []) as closed:
        url = closed.url  # bound, then closed: nothing listens there
    unreachable = KubeRay(api_client=client.ApiClient(client.Configuration(host=url)), request_timeout_s=5)
    with pytest.raises(FabricError) as caught:
        unreachable.list_rayjobs()
    assert caught.value.code == ErrorCode.GATEWAY_UNREACHABLE and "unreachable" in caught.value.message


# --------------------------------------------------------------------------- `fabric k8s`


@pytest.fixture
def kubeconfig(fake, tmp_path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "me", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": "team-a"}}],
    }))
    return path


def cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from fabric.cli.k8s import k8s_app

    return CliRunner().invoke(k8s_app, list(args))


def test_cli_submit_dry_run_prints_a_valid_rayjob(check):
    result = cli("submit", str(DAG), "--dry-run", "--params", '{"labels": {"a": "b"}}', "--image", "me/fabric:1")
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.stdout)
    assert check(manifest) == []
    assert manifest["metadata"]["namespace"] == "default"
    assert json.loads(shlex.split(manifest["spec"]["entrypoint"])[3]) == load_spec(DAG).to_dict()
    images = {c["image"] for g in [manifest["spec"]["rayClusterSpec"]["headGroupSpec"],
                                   *manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}
    assert images == {"me/fabric:1"}
    bad = cli("submit", str(REPO / "no-such-dag.yaml"), "--dry-run")
    assert bad.exit_code == 2 and "error [" in bad.output


def test_cli_submit_list_status_delete_against_the_fake(fake, kubeconfig, check):
    done = {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}
    fake.on_create = lambda plural, obj: threading.Timer(
        0.2, fake.set_status, ("rayjobs", "team-a", obj["metadata"]["name"], done)).start()
    result = cli("submit", str(DAG), "--kubeconfig", str(kubeconfig), "--watch", "--timeout", "20")
    assert result.exit_code == 0, result.output
    name = result.stdout.splitlines()[0]
    stored = fake.objects[("rayjobs", "team-a", name)]  # the context's namespace
    assert check({k: v for k, v in stored.items() if k != "status"}) == []
    assert "Complete / SUCCEEDED" in result.stdout
    listed = cli("list", "--kubeconfig", str(kubeconfig))
    assert listed.exit_code == 0 and name in listed.stdout and "quant_backtest_v1" in listed.stdout
    status = cli("status", name, "--json", "--kubeconfig", str(kubeconfig))
    assert status.exit_code == 0 and json.loads(status.stdout) == done
    assert cli("delete", name, "--kubeconfig", str(kubeconfig)).exit_code == 0
    assert fake.objects == {}
    missing = cli("delete", name, "--kubeconfig", str(kubeconfig))
    assert missing.exit_code == 3 and "NOT_FOUND" in missing.output
