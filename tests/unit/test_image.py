"""One Ray version and one pair of image names across the Dockerfile, pyproject, k8s/, cluster.yaml and fabric.k8s."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from fabric import k8s

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
DOCKERFILE = (REPO / "Dockerfile").read_text()
BUILD = (REPO / "docker" / "build.sh").read_text()
RAY = "2.60.0"


def _constraints_module() -> Any:
    spec = importlib.util.spec_from_file_location("image_constraints", REPO / "scripts" / "image_constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _walk(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def _containers(node: Any) -> Iterator[dict[str, Any]]:
    for containers in _walk(node, "containers"):
        yield from containers


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(str(p.relative_to(REPO)), d) for p in sorted((REPO / "k8s").rglob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)]


def test_pyproject_pins_one_ray_everywhere():
    requirements = [Requirement(r) for r in PYPROJECT["dependencies"]]
    requirements += [Requirement(r) for extra in PYPROJECT["optional-dependencies"].values() for r in extra]
    rays = [r for r in requirements if r.name == "ray"]
    assert rays and all(str(r.specifier) == f"=={RAY}" for r in rays), rays
    assert k8s.RAY_VERSION == RAY and PYPROJECT["requires-python"] == ">=3.11"


def test_fabric_k8s_names_the_images_the_build_makes():
    version = PYPROJECT["version"]
    assert f"{k8s.IMAGE_REPO}:{version}" == k8s.DEFAULT_IMAGE
    assert f"{k8s.IMAGE_REPO}:{version}-gpu" == k8s.GPU_IMAGE
    assert f'IMAGE="${{IMAGE:-{k8s.IMAGE_REPO}}}"' in BUILD
    assert f"RAY_VERSION={RAY}\n" in BUILD and '"pyproject.toml"' in BUILD  # the tag is pyproject's version
    assert 'docker build -t "$IMAGE:$VERSION" ' in BUILD and 'docker build -t "$IMAGE:$VERSION-gpu" ' in BUILD
    cpu, gpu = BUILD.split('docker build -t "$IMAGE:$VERSION-gpu"')
    assert "BASE_IMAGE=rayproject/ray:$RAY_VERSION-py311\"" in cpu and "whl/cpu" in cpu
    assert "BASE_IMAGE=rayproject/ray:$RAY_VERSION-py311-gpu\"" in gpu and "whl/cpu" not in gpu


def test_the_dockerfile_builds_on_rays_image_with_the_pinned_extras():
    assert re.search(rf"^ARG BASE_IMAGE=rayproject/ray:{re.escape(RAY)}-py311$", DOCKERFILE, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", DOCKERFILE, re.M)
    assert f"rayproject/ray:{RAY}-py311-gpu" in DOCKERFILE and f"{k8s.GPU_IMAGE} " in DOCKERFILE
    extras = re.search(r"^ARG EXTRAS=(\S+)$", DOCKERFILE, re.M).group(1).split(",")
    assert tuple(extras) == _constraints_module().IMAGE_EXTRAS
    assert set(extras) <= set(PYPROJECT["optional-dependencies"]) and "dev" not in extras
    installs = re.findall(r"pip install [^\n]*", DOCKERFILE)
    assert len(installs) == 2 and all("-c docker/constraints.txt" in line for line in installs), installs
    assert f"assert ray.__version__ == '{RAY}'" in DOCKERFILE
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git"} <= set(ignored) and not {"fabric", "serve", "jobs", "docker"} & set(ignored)


def test_the_constraints_pin_every_runtime_requirement():
    module = _constraints_module()
    pins = dict(line.split("==") for line in (REPO / "docker" / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["ray"] == RAY
    torch_pin = re.search(r"torch==(\S+)", (REPO / "scripts" / "setup.sh").read_text()).group(1)
    assert pins["torch"] == torch_pin  # the image runs the torch the tests ran
    unpinned = sorted({r.name.lower() for r in module.roots()} - set(pins))
    assert unpinned == [], f"{unpinned}: rerun python scripts/image_constraints.py"


@pytest.mark.parametrize(("source", "doc"), k8s_docs())
def test_k8s_manifests_use_the_ray_version_and_the_images(source, doc):
    assert all(v == RAY for v in _walk(doc, "rayVersion")), source
    for container in _containers(doc):
        gpu = "nvidia.com/gpu" in ((container.get("resources") or {}).get("limits") or {})
        assert container["image"] == (k8s.GPU_IMAGE if gpu else k8s.DEFAULT_IMAGE), (source, container["name"])


def test_k8s_has_both_images_and_every_rayjob_cluster_names_its_version():
    images = {c["image"] for _, doc in k8s_docs() for c in _containers(doc)}
    assert images == {k8s.DEFAULT_IMAGE, k8s.GPU_IMAGE}
    clusters = [s for _, doc in k8s_docs() for key in ("rayClusterSpec", "rayClusterConfig")
                for s in _walk(doc, key)] + [d["spec"] for _, d in k8s_docs() if d.get("kind") == "RayCluster"]
    assert clusters and all(c["rayVersion"] == RAY for c in clusters)
    assert k8s.job_cluster_spec()["rayVersion"] == RAY
    assert {c["image"] for c in _containers(k8s.job_cluster_spec())} == {k8s.DEFAULT_IMAGE}


def test_cluster_yaml_runs_the_image_and_its_gpu_variant_on_gpu_types():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    docker = config["docker"]
    assert docker["image"] == k8s.DEFAULT_IMAGE and docker["container_name"] and docker["pull_before_run"] is True
    assert "head_image" not in docker and "worker_image" not in docker
    for name, node_type in config["available_node_types"].items():
        gpu = node_type["resources"].get("GPU", 0) > 0
        image = (node_type.get("docker") or {}).get("worker_image", docker["image"])
        assert image == (k8s.GPU_IMAGE if gpu else k8s.DEFAULT_IMAGE), name
    assert any(t["resources"].get("GPU") for t in config["available_node_types"].values())
