"""fabric.k8s_validate: KubeRay manifests against the vendored CRDs, with the API server's Strict semantics."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fabric.k8s_schema import CelUnsupported, cel_compile, cel_eval
from fabric.k8s_validate import CRDS_DIR, check_manifest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
KUBERAY = DATA / "kuberay"
# The vendored CRDs are KubeRay v1.7.0, unmodified (fabric/k8s_crds/README.md lists the same sums).
CRD_SHA256 = {
    "ray.io_rayclusters.yaml": "c44704442eef0c6721ad40c1d66782c8bd3fdab9d3344306a5820910a679baa1",
    "ray.io_rayjobs.yaml": "01a5cf3b17c1769fda44af7e82debcd98722f0c27b9ab84d084681c6649121f5",
    "ray.io_rayservices.yaml": "0a8fc325e6e22b9231c1f282b309555e2ecf94227ca20a03df3d1d9a403907ab",
}


def run(*args: str | Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "fabric.k8s_validate", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=50)
    return proc.returncode, proc.stdout + proc.stderr


def rayjob(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j"},
            "spec": {"entrypoint": "python x.py", "clusterSelector": {"ray.io/cluster": "fabric"}, **spec}}


def test_the_vendored_crds_are_kuberay_1_7_0_unmodified():
    assert {p.name for p in CRDS_DIR.glob("*.yaml")} == set(CRD_SHA256)
    for name, digest in CRD_SHA256.items():
        assert hashlib.sha256((CRDS_DIR / name).read_bytes()).hexdigest() == digest, name
    notice = (CRDS_DIR / "README.md").read_text()
    assert "Apache License 2.0" in notice and "v1.7.0" in notice and all(d in notice for d in CRD_SHA256.values())


def test_good_manifests_and_kustomization_pass():
    rc, out = run(KUBERAY / "good-raycluster.yaml", KUBERAY / "good-rayjob.yaml", KUBERAY / "kustomization.yaml")
    assert rc == 0, out
    assert out.count("OK ") == 3, out


@pytest.mark.parametrize(("name", "expected"), [
    ("bad-misspelled-field.yaml", 'spec.workerGroupSpecs[0].minReplica: unknown field (did you mean "minReplicas"?)'),
    ("bad-replicas-type.yaml", 'spec.workerGroupSpecs[0].replicas: expected integer, got string "2"'),
    ("bad-missing-headgroupspec.yaml", "spec.rayClusterConfig.headGroupSpec: required field is missing"),
])
def test_each_broken_manifest_fails_with_a_pointed_message(name, expected):
    rc, out = run(KUBERAY / name)
    assert rc == 1, out
    assert out.startswith("FAIL ") and expected in out, out
    assert "(line " in out, out


def test_check_manifest_on_a_payload():
    job = rayjob()
    assert check_manifest(job) == []
    job["spec"]["rayVersion"] = 2.6  # rayVersion belongs to rayClusterSpec, not to the RayJob's spec
    assert check_manifest(job) == ["spec.rayVersion: unknown field"]


def test_types_quantities_ranges_and_required_defaults():
    good = check_manifest(rayjob(rayClusterSpec=yaml_cluster()))
    assert good == []
    cluster = yaml_cluster()
    container = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {"cpu": "half", "memory": "4Gi"}, "requests": {"cpu": 0.5}}
    cluster["workerGroupSpecs"][0]["replicas"] = 2**40  # int32 in the CRD
    del cluster["workerGroupSpecs"][0]["minReplicas"]  # required, but with a default: never missing
    problems = check_manifest(rayjob(rayClusterSpec=cluster))
    head = "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].resources"
    assert f'{head}.limits.cpu: "half" is not a Kubernetes quantity (e.g. "500m", "2", "4Gi")' in problems, problems
    assert f"{head}.requests.cpu: expected integer or string, got number 0.5" in problems, problems
    assert any("replicas" in p and "out of range" in p for p in problems), problems
    assert len(problems) == 3, problems


def test_nulls_are_pruned_and_rayjob_operator_checks():
    assert check_manifest(rayjob(rayClusterSpec=yaml_cluster(), runtimeEnvYAML=None)) == []
    problems = check_manifest(rayjob(backoffLimit=-1, runtimeEnvYAML="- a list", clusterSelector={}))
    assert "spec.backoffLimit: must be at least 0 (got -1)" in problems, problems
    assert any(p.startswith("spec.runtimeEnvYAML: runtimeEnvYAML must be a YAML mapping") for p in problems)
    assert "spec.rayClusterSpec: one of rayClusterSpec or clusterSelector must be set" in problems
    long = rayjob()
    long["metadata"]["name"] = "x" * 48
    assert check_manifest(long) == ["metadata.name: RayJob name must be at most 47 characters (got 48)"]
    assert check_manifest(long, operator_checks=False) == []


def test_worker_groups_replica_bounds_and_labels():
    cluster = yaml_cluster()
    cluster["workerGroupSpecs"][0].update(minReplicas=4, maxReplicas=3)
    doc = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "spec": cluster,
           "metadata": {"name": "Fabric", "labels": {"a/b/c": "ok", "team": "-bad"}}}
    problems = check_manifest(doc)
    assert "spec.workerGroupSpecs[0].minReplicas: minReplicas 4 is greater than maxReplicas 3" in problems
    assert any(p.startswith("metadata.name: RayCluster name must be a DNS-1035 label") for p in problems)
    assert any(p.startswith('metadata.labels["a/b/c"]: invalid key') for p in problems), problems
    assert any(p.startswith("metadata.labels.team: invalid label value") for p in problems), problems
    assert len(problems) == 4, problems


def test_kubernetes_extensions_on_a_synthetic_crd():
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {
        "size": "10Gi", "extra": {"known": 1, "free": {"x": 1}}, "tags": ["a"], "when": None,
        "embedded": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}}}
    crds = DATA / "synthetic-crds"
    assert check_manifest(widget, crds_dir=crds) == []
    broken = copy.deepcopy(widget)
    broken["spec"].update(size=0, tags=["a", "a"], mode="c")
    broken["spec"]["extra"]["known"] = "one"  # preserve-unknown-fields keeps the known fields' types
    del broken["spec"]["embedded"]["kind"]
    problems = check_manifest(broken, crds_dir=crds)
    assert "spec: size must not be zero" in problems, problems
    assert any(p.startswith("spec.tags[1]: duplicate entry") for p in problems), problems
    assert any(p.startswith("spec.mode: must be one of") for p in problems), problems
    assert 'spec.extra.known: expected integer, got string "one"' in problems, problems
    assert "spec.embedded.kind: required field is missing" in problems, problems
    assert len(problems) == 5, problems  # the size() rule is outside the CEL subset: skipped, not failed


@pytest.mark.parametrize(("rule", "obj", "expected"), [
    ("!(has(self.a) && has(self.b))", {"a": 1}, True),
    ("!(has(self.a) && has(self.b))", {"a": 1, "b": 2}, False),
    ("!((has(self.a) || has(self.b)) && has(self.c))", {"b": 1, "c": {}}, False),
    ("self.mode in ['x', 'y'] && self.on == true", {"mode": "y", "on": True}, True),
    ("self.x.y != null", {"x": {"y": "a!=b"}}, True),
])
def test_the_cel_subset(rule, obj, expected):
    assert cel_eval(cel_compile(rule), obj) is expected


@pytest.mark.parametrize("rule", ["self == oldSelf", "size(self.tags) < 3", "self.missing == 1"])
def test_cel_outside_the_subset_is_unsupported_not_false(rule):
    with pytest.raises(CelUnsupported):
        cel_eval(cel_compile(rule), {"tags": []})


def test_unknown_kinds_warn_and_misspelled_kinds_fail(tmp_path):
    (tmp_path / "x.yaml").write_text("apiVersion: example.org/v1\nkind: Thing\nmetadata: {name: t}\n")
    rc, out = run(tmp_path / "x.yaml")
    assert rc == 0 and out.startswith("WARN "), out
    (tmp_path / "y.yaml").write_text("apiVersion: ray.io/v1\nkind: Raycluster\nmetadata: {name: t}\n")
    rc, out = run(tmp_path / "y.yaml")
    assert rc == 1 and 'did you mean "RayCluster"' in out, out
    (tmp_path / "z.yaml").write_text("apiVersion: v1\nkind: RayJob\nmetadata: {name: t}\n")
    rc, out = run(tmp_path / "z.yaml")
    assert rc == 1 and "RayJob belongs to API group ray.io" in out, out


def test_yaml_traps_duplicate_keys_and_missing_paths(tmp_path):
    text = (KUBERAY / "good-raycluster.yaml").read_text().replace('rayVersion: "2.60.0"', "rayVersion: 2.60")
    (tmp_path / "unquoted.yaml").write_text(text)
    rc, out = run(tmp_path / "unquoted.yaml")
    assert rc == 1 and 'spec.rayVersion: expected string, got 2.60 (quote it: "2.60")' in out, out
    (tmp_path / "twice.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\nkind: Namespace\n")
    rc, out = run(tmp_path / "twice.yaml")
    assert rc == 1 and "kind: duplicate key (first on line 2) (line 4)" in out, out
    (tmp_path / "kustomization.yaml").write_text("resources: [unquoted.yaml, gone.yaml]\n")
    rc, out = run(tmp_path / "kustomization.yaml")
    assert rc == 1 and 'resources[1]: "gone.yaml" does not exist' in out and "unquoted" not in out, out
    rc, out = run("--crds-dir", tmp_path / "nowhere", tmp_path / "twice.yaml")
    assert rc == 2 and "CRD directory not found" in out, out


def yaml_cluster() -> dict[str, Any]:
    """A small valid RayCluster spec (the one in tests/data/kuberay/good-rayjob.yaml)."""
    import yaml

    return yaml.safe_load((KUBERAY / "good-rayjob.yaml").read_text())["spec"]["rayClusterSpec"]
