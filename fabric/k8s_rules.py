"""What KubeRay and Kubernetes reject beyond a CRD's schema: operator checks, ObjectMeta syntax, kustomize paths."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from fabric.k8s_schema import Issue, describe

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# KubeRay (ray-operator/controllers/ray/utils/constant.go) appends suffixes to these names for its children.
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def metadata_issues(meta: Any) -> Iterator[Issue]:
    for which in ("labels", "annotations"):
        mapping = meta.get(which) if isinstance(meta, dict) else None
        for key, value in mapping.items() if isinstance(mapping, dict) else ():
            prefix, _, name = key.rpartition("/")
            if (prefix and (len(prefix) > 253 or not _DNS1123.fullmatch(prefix))) or len(name) > 63 \
                    or not _QUALIFIED.fullmatch(name):
                yield Issue(("metadata", which, key), "invalid key: [prefix/]name, the name at most 63 alphanumerics,"
                            " '-', '_' or '.', starting and ending alphanumeric")
            if which == "labels" and isinstance(value, str) and value and (
                    len(value) > 63 or not _QUALIFIED.fullmatch(value)):
                yield Issue(("metadata", which, key), "invalid label value: at most 63 alphanumerics, '-', '_' or '.',"
                            " starting and ending alphanumeric")


def _cluster_issues(spec: Any, at: tuple) -> Iterator[Issue]:
    if not isinstance(spec, dict):
        return
    groups = [("headGroupSpec", at + ("headGroupSpec",), spec.get("headGroupSpec"))]
    groups += [("workerGroupSpec", at + ("workerGroupSpecs", i), g) for i, g in
               enumerate(spec.get("workerGroupSpecs") or [])]
    for what, where, group in groups:
        if not isinstance(group, dict):
            continue
        containers = ((group.get("template") or {}).get("spec") or {}).get("containers")
        if isinstance(containers, list) and not containers:
            yield Issue(where + ("template", "spec", "containers"), f"{what} should have at least one container")
        if what == "headGroupSpec":
            continue
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        if isinstance(low, int) and isinstance(high, int):
            for key, value in (("minReplicas", low), ("maxReplicas", high)):
                if value < 0:
                    yield Issue(where + (key,), f"must not be negative (got {value})")
            if 0 <= high < low:
                yield Issue(where + ("minReplicas",), f"minReplicas {low} is greater than maxReplicas {high}")


def _yaml_mapping(value: Any, where: tuple, what: str) -> Iterator[Issue]:
    if not isinstance(value, str) or not value.strip():
        return
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        yield Issue(where, f"{what} is not valid YAML: {getattr(exc, 'problem', exc)}")
        return
    if not isinstance(parsed, dict):
        yield Issue(where, f"{what} must be a YAML mapping, got {describe(parsed)}")


def operator_issues(kind: str, doc: dict[str, Any]) -> Iterator[Issue]:
    """What the KubeRay operator rejects at reconcile time, long after the API server accepted the object."""
    name, limit = (doc.get("metadata") or {}).get("name"), NAME_LIMITS.get(kind)
    if isinstance(name, str) and limit:
        if len(name) > limit:
            yield Issue(("metadata", "name"), f"{kind} name must be at most {limit} characters (got {len(name)})")
        elif not _DNS1035.fullmatch(name):
            yield Issue(("metadata", "name"), f"{kind} name must be a DNS-1035 label (lowercase letters, digits "
                        "and '-', starting with a letter, ending with a letter or digit)")
    spec = doc.get("spec")
    if spec is None:
        yield Issue(("spec",), f"required field is missing (the operator cannot reconcile a {kind} without spec)")
    if not isinstance(spec, dict):
        return
    if kind == "RayCluster":
        yield from _cluster_issues(spec, ("spec",))
    elif kind == "RayService":
        yield from _yaml_mapping(spec.get("serveConfigV2"), ("spec", "serveConfigV2"), "serveConfigV2")
        yield from _cluster_issues(spec.get("rayClusterConfig"), ("spec", "rayClusterConfig"))
    elif kind == "RayJob":
        selector = spec.get("clusterSelector") or {}
        if spec.get("rayClusterSpec") is None and not selector:
            yield Issue(("spec", "rayClusterSpec"), "one of rayClusterSpec or clusterSelector must be set")
        if selector and not selector.get("ray.io/cluster"):
            yield Issue(("spec", "clusterSelector", "ray.io/cluster"), "the cluster name must not be empty")
        if spec.get("suspend") is True and spec.get("shutdownAfterJobFinishes") is not True:
            yield Issue(("spec", "suspend"), "a RayJob with shutdownAfterJobFinishes false cannot be suspended")
        for key, low in (("activeDeadlineSeconds", 1), ("preRunningDeadlineSeconds", 1), ("backoffLimit", 0),
                         ("ttlSecondsAfterFinished", 0)):
            value = spec.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value < low:
                yield Issue(("spec", key), f"must be at least {low} (got {value})")
        yield from _yaml_mapping(spec.get("runtimeEnvYAML"), ("spec", "runtimeEnvYAML"), "runtimeEnvYAML")
        yield from _cluster_issues(spec.get("rayClusterSpec"), ("spec", "rayClusterSpec"))


def kustomization_issues(doc: dict[str, Any], base: Path) -> Iterator[Issue]:
    """Every local path a kustomization names exists (remote bases are not fetched)."""
    refs: list[tuple[tuple, Any]] = []
    for key in ("resources", "bases", "components", "crds"):
        entries = doc.get(key) or []
        if not isinstance(entries, list):
            yield Issue((key,), f"expected a list of paths, got {describe(entries)}")
            continue
        refs += [((key, i), ref) for i, ref in enumerate(entries)]
    for key in ("patches", "patchesJson6902"):
        refs += [((key, i, "path"), p["path"]) for i, p in enumerate(doc.get(key) or [])
                 if isinstance(p, dict) and "path" in p]
    refs += [(("patchesStrategicMerge", i), p) for i, p in enumerate(doc.get("patchesStrategicMerge") or [])
             if isinstance(p, str) and "\n" not in p]
    for gen in ("configMapGenerator", "secretGenerator"):
        for i, g in enumerate(g for g in doc.get(gen) or [] if isinstance(g, dict)):
            refs += [((gen, i, "files", j), f.split("=", 1)[-1]) for j, f in enumerate(g.get("files") or [])
                     if isinstance(f, str)]
            refs += [((gen, i, "envs", j), f) for j, f in enumerate(g.get("envs") or ([g["env"]] if g.get("env")
                                                                                        else []))]
    for where, ref in refs:
        if not isinstance(ref, str):
            yield Issue(where, f"expected a path string, got {describe(ref)}")
        elif "://" in ref or "?ref=" in ref or ref.startswith(("github.com/", "git@", "gitlab.com/")):
            continue
        elif not (target := base / ref).exists():
            yield Issue(where, f"{json.dumps(ref)} does not exist (looked for {target})")
        elif target.is_dir() and not any((target / n).exists() for n in KUSTOMIZATION_NAMES):
            yield Issue(where, f"{json.dumps(ref)} is a directory without a kustomization.yaml")
