"""Offline checks of Kubernetes manifests and payloads against KubeRay's vendored CRDs: `python -m fabric.k8s_validate`.

Every YAML document gets one line: `OK path#i Kind/name`, `WARN ...` (exit code unchanged) or
`FAIL path#i Kind/name: <json-path>: <message> (line N)`, further errors as indented `- ...` lines.
Exit 1 if any document FAILed, 2 for usage errors.

- ray.io kinds (any kind with a CRD in fabric/k8s_crds, or in --crds-dir / $KUBERAY_CRDS_DIR) are checked against
  the openAPIV3Schema of the version in apiVersion, as the API server with fieldValidation=Strict would
  (fabric/k8s_schema.py): unknown fields are errors (a server without Strict prunes a typo silently), required
  fields, types, int-or-string quantities, enums, list-type duplicates, int32/int64 ranges, ObjectMeta, and the
  CEL rules of the subset. Then the checks the KubeRay operator makes at reconcile time (--schema-only skips them):
  name length and DNS-1035, a container per group, minReplicas <= maxReplicas, a RayJob's cluster, deadline
  ranges, runtimeEnvYAML and serveConfigV2 as YAML mappings.
- Built-in kinds (Deployment, Service, ...): apiVersion, kind and metadata.name only; an odd apiVersion WARNs.
- Kustomization files: every local path they name must exist.
- Other kinds WARN; a near-miss of a known kind, or a CRD kind under the wrong group, FAILs. YAML errors and
  duplicate keys FAIL.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import difflib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fabric.k8s_rules import KUSTOMIZATION_NAMES, NAME_LIMITS, kustomization_issues, metadata_issues, operator_issues
from fabric.k8s_schema import LOADER, CrdStore, Issue, describe, issues_from_error, prune_nulls

CRDS_DIR = Path(__file__).resolve().parent / "k8s_crds"
BUILTIN_KINDS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("Namespace", "ConfigMap", "Secret", "Service", "ServiceAccount", "PersistentVolumeClaim",
                     "PersistentVolume", "Pod", "ResourceQuota", "LimitRange"), ("v1",)),
    **dict.fromkeys(("Deployment", "StatefulSet", "DaemonSet"), ("apps/v1",)),
    **dict.fromkeys(("Job", "CronJob"), ("batch/v1",)),
    **dict.fromkeys(("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"), ("rbac.authorization.k8s.io/v1",)),
    **dict.fromkeys(("Ingress", "NetworkPolicy"), ("networking.k8s.io/v1",)),
    **dict.fromkeys(("ServiceMonitor", "PodMonitor"), ("monitoring.coreos.com/v1",)),
    "HorizontalPodAutoscaler": ("autoscaling/v2", "autoscaling/v1"),
    "PodDisruptionBudget": ("policy/v1",), "PriorityClass": ("scheduling.k8s.io/v1",),
    "CustomResourceDefinition": ("apiextensions.k8s.io/v1",),
    "Kustomization": ("kustomize.config.k8s.io/v1beta1",), "Component": ("kustomize.config.k8s.io/v1alpha1",),
}


@dataclass
class Result:
    """The verdict on one YAML document."""
    source: str
    index: int
    kind: str = "-"
    name: str = "-"
    errors: list[Issue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "FAIL" if self.errors else "WARN" if self.warnings else "OK"

    def render(self) -> str:
        head = f"{self.status} {self.source}#{self.index} {self.kind}/{self.name}"
        if self.errors:
            first, *rest = sorted(self.errors, key=lambda i: (i.line or 0, i.render()))
            return "\n".join([f"{head}: {first.render()}", *(f"    - {e.render()}" for e in rest),
                              *(f"    - warning: {w}" for w in self.warnings)])
        return f"{head}: " + "; ".join(self.warnings) if self.warnings else head


# --------------------------------------------------------------------------- YAML


def _as_json(value: Any) -> Any:
    """What the API server receives once YAML became JSON: string keys, dates as text, bytes as base64."""
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else json.dumps(k) if isinstance(k, bool) or k is None else str(k)):
                _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _duplicate_keys(node: yaml.Node, path: tuple = ()) -> Iterator[Issue]:
    """Strict field validation rejects a field given twice; PyYAML keeps the last one without a word."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if key.value in first:
                    yield Issue(path + (key.value,), f"duplicate key (first on line {first[key.value]})", line)
                first.setdefault(key.value, line)
                yield from _duplicate_keys(value, path + (key.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, path + (i,))


def _locate(node: yaml.Node | None, path: tuple) -> tuple[int | None, yaml.Node | None]:
    """The line of the deepest YAML node along `path`, and that node when the whole path exists."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    line, child = key.start_mark.line + 1, value
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            return line, None
        node = child
    return line, node


def _documents(text: str) -> Iterator[tuple[int, yaml.Node | None, Any, str | None]]:
    """(index, node, data, parse error) per document; a parse error ends the stream."""
    loader = LOADER(text)
    try:
        index = 0
        while True:
            try:
                if not loader.check_node():
                    return
                node = loader.get_node()
                data = loader.construct_document(node)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                yield index, None, None, f"YAML parse error: {problem}" + (f" (line {mark.line + 1})" if mark else "")
                return
            yield index, node, data, None
            index += 1
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- documents


class Checker:
    """Checks documents against one CRD directory; the CRDs are parsed once per Checker, when first needed."""

    def __init__(self, crds_dir: Path | None = None, *, operator_checks: bool = True) -> None:
        self.crds = CrdStore(crds_dir or Path(os.environ.get("KUBERAY_CRDS_DIR") or CRDS_DIR))
        self.operator_checks = operator_checks

    def check(self, data: Any, *, source: str = "<payload>", index: int = 0, node: yaml.Node | None = None,
              base_dir: Path | None = None, kustomization: bool = False) -> Result:
        res = Result(source, index, errors=list(_duplicate_keys(node)) if node is not None else [])
        if not isinstance(data, dict):
            res.errors.append(Issue((), f"document is not a mapping (got {describe(data)})"))
            return _with_lines(res, node)
        data = _as_json(data)
        kind, api_version = data.get("kind"), data.get("apiVersion")
        meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        res.kind = kind if isinstance(kind, str) and kind else "-"
        name = meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else None)
        res.name = name if isinstance(name, str) else "-"
        if kustomization or (kind in ("Kustomization", "Component")
                             and str(api_version).startswith("kustomize.config.k8s.io/")):
            res.kind = "Kustomization" if res.kind == "-" else res.kind
            res.errors += kustomization_issues(data, base_dir or Path("."))
            return _with_lines(res, node)
        for key, value in (("apiVersion", api_version), ("kind", kind)):
            if not isinstance(value, str) or not value:
                res.errors.append(Issue((key,), "required field is missing" if value is None
                                        else f"expected a non-empty string, got {describe(value)}"))
        if res.errors and not (isinstance(kind, str) and isinstance(api_version, str)):
            return _with_lines(res, node)
        group, _, version = api_version.rpartition("/")
        if self.crds.has(group, kind):
            self._custom_resource(res, data, group, version, kind)
        elif kind in BUILTIN_KINDS:
            if not (meta.get("name") or meta.get("generateName")):
                res.errors.append(Issue(("metadata", "name"), "required field is missing"))
            if api_version not in BUILTIN_KINDS[kind]:
                res.warnings.append(f"apiVersion {api_version} is unusual for {kind} "
                                    f"(expected {' or '.join(BUILTIN_KINDS[kind])})")
        else:
            self._unknown_kind(res, group, kind, api_version)
        return _with_lines(res, node)

    def _unknown_kind(self, res: Result, group: str, kind: str, api_version: str) -> None:
        elsewhere = sorted(g for g, k in self.crds.index if k == kind and g != group)
        known = [*BUILTIN_KINDS, *(k for g, k in self.crds.index if g == group)]
        near = [k for k in known if k.lower() == kind.lower()] or difflib.get_close_matches(kind, known, 1, 0.85)
        if elsewhere:
            res.errors.append(Issue(("apiVersion",), f"{kind} belongs to API group {elsewhere[0]}, not "
                                    f"{json.dumps(group or 'core')} (use apiVersion: {elsewhere[0]}/v1)"))
        elif near:
            hint = f"unknown kind {json.dumps(kind)} (did you mean {json.dumps(near[0])}?)"
            res.errors.append(Issue(("kind",), hint))
        elif group == "ray.io":
            res.warnings.append(f"no CRD for {api_version} {kind} in {self.crds.directory}; not validated")
        else:
            res.warnings.append(f"unknown kind {api_version} {kind}; not validated")

    def _custom_resource(self, res: Result, data: dict[str, Any], group: str, version: str, kind: str) -> None:
        entry, served = self.crds.version(group, kind, version)
        if entry is None or entry.get("served") is False:
            res.errors.append(Issue(("apiVersion",), f"{group}/{version} is not a served version of {kind} "
                                    f"(served: {', '.join(f'{group}/{v}' for v in served)})"))
            return
        if entry.get("deprecated"):
            res.warnings.append(" ".join(str(entry.get("deprecationWarning")
                                             or f"{group}/{version} {kind} is deprecated").split()))
        validator = self.crds.validator(group, kind, version)
        prune_nulls(data, validator.schema)
        seen: set[tuple[tuple, str]] = set()
        for err in validator.iter_errors(data):
            for issue in issues_from_error(err):
                if (issue.path, issue.message) not in seen:
                    seen.add((issue.path, issue.message))
                    res.errors.append(issue)
        res.errors += metadata_issues(data.get("metadata"))
        if self.operator_checks and group == "ray.io" and kind in NAME_LIMITS:
            res.errors += [i for i in operator_issues(kind, data) if (i.path, i.message) not in seen]
        meta = data.get("metadata") or {}
        if not (meta.get("name") or meta.get("generateName")):
            res.errors.append(Issue(("metadata", "name"), "required field is missing"))

    def check_text(self, text: str, source: str, base_dir: Path, kustomization: bool = False) -> list[Result]:
        results = []
        for index, node, data, error in _documents(text):
            if error:
                results.append(Result(source, index, errors=[Issue((), error)]))
            elif data is not None or not (node is None or isinstance(node, yaml.ScalarNode) and node.value == ""):
                results.append(self.check(data, source=source, index=index, node=node, base_dir=base_dir,
                                          kustomization=kustomization))
        return results

    def check_path(self, path: Path) -> list[Result]:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return [Result(str(path), 0, errors=[Issue((), f"cannot read file: {exc}")])]
        return self.check_text(text, str(path), path.parent, kustomization=path.name in KUSTOMIZATION_NAMES)


def _with_lines(res: Result, node: yaml.Node | None) -> Result:
    """Each issue gets the line it points at; a type error on an unquoted scalar shows the text and says to quote it."""
    for issue in res.errors:
        if issue.line is None and node is not None:
            issue.line, target = _locate(node, issue.path)
            # YAML reads an unquoted 2.60, 1 or true as a number or a boolean: show the text as it was written.
            if issue.message.startswith(("expected string, got", "expected integer or string, got")) \
                    and isinstance(target, yaml.ScalarNode) and not target.style:
                head = issue.message.partition(", got ")[0]
                issue.message = f'{head}, got {target.value} (quote it: "{target.value}")'
    return res


_CHECKERS: dict[tuple[str, bool], Checker] = {}


def check_manifest(obj: Any, source: str = "<payload>", crds_dir: Path | None = None,
                   operator_checks: bool = True) -> list[str]:
    """One in-memory manifest: [] when valid, else "json-path: message" strings. The CRDs are cached per process."""
    key = (str(crds_dir), operator_checks)
    if key not in _CHECKERS:
        _CHECKERS[key] = Checker(crds_dir, operator_checks=operator_checks)
    return [i.render() for i in _CHECKERS[key].check(obj, source=source).errors]


def manifest_files(paths: Iterable[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            yield from (Path(root) / f for f in sorted(files) if f.endswith((".yaml", ".yml")) or f == "Kustomization")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fabric.k8s_validate", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="manifest file, directory, or - for stdin")
    parser.add_argument("--crds-dir", type=Path, help=f"CRD directory (default: $KUBERAY_CRDS_DIR or {CRDS_DIR})")
    parser.add_argument("--schema-only", action="store_true", help="skip the KubeRay operator's checks")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only FAIL and WARN lines")
    args = parser.parse_args(argv)
    try:
        checker = Checker(args.crds_dir, operator_checks=not args.schema_only)
        _ = checker.crds.index  # an unreadable CRD directory is a usage error, not a FAIL of every document
    except (OSError, yaml.YAMLError) as exc:
        print(f"k8s_validate: {exc}", file=sys.stderr)
        return 2
    failed, count = False, 0
    for raw in args.paths:
        if raw == "-":
            results = checker.check_text(sys.stdin.read(), "<stdin>", Path.cwd())
        elif not Path(raw).exists():
            results = [Result(raw, 0, errors=[Issue((), "no such file or directory")])]
        elif not (files := list(manifest_files([raw]))):
            results = [Result(raw, 0, errors=[Issue((), "directory contains no *.yaml / *.yml files")])]
        else:
            results = [r for f in files for r in checker.check_path(f)]
        for res in results:
            count += 1
            failed |= res.status == "FAIL"
            if not (args.quiet and res.status == "OK"):
                print(res.render())
    if count == 0:
        print("k8s_validate: no YAML documents found", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
