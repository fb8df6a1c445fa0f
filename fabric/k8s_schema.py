"""CRD schemas as the API server applies them: structural OpenAPI as JSON Schema, Strict fields, a CEL subset."""

from __future__ import annotations

import ast
import difflib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the RayJob CRD alone is 1.4 MB
_STR: dict[str, Any] = {"type": "string"}
_STR_MAP: dict[str, Any] = {"type": "object", "additionalProperties": _STR}
# The API server validates ObjectMeta itself; a CRD's schema says only `metadata: {type: object}`.
OBJECT_META: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": {
    **{k: _STR for k in ("name", "generateName", "namespace", "uid", "selfLink", "resourceVersion",
                          "deletionTimestamp")},
    "generation": {"type": "integer"}, "deletionGracePeriodSeconds": {"type": "integer"},
    "labels": _STR_MAP, "annotations": _STR_MAP, "finalizers": {"type": "array", "items": _STR},
    "ownerReferences": {"type": "array", "items": {"type": "object"}},
    "managedFields": {"type": "array", "items": {"type": "object"}},
    "creationTimestamp": {"type": ["string", "null"]},
}}
# Keys to_jsonschema rewrites (or drops: text only); the rest (type, enum, pattern, format, ...) pass unchanged.
_REWRITTEN = frozenset({
    "description", "example", "nullable", "properties", "items", "additionalProperties", "anyOf", "allOf", "oneOf",
    "not", "required", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource", "x-kubernetes-map-type"})
_QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"  # how every resource-quantity pattern begins
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


@dataclass
class Issue:
    """One problem in a document: where (a JSON path) and what; the line is filled in when YAML is known."""
    path: tuple = ()
    message: str = ""
    line: int | None = None

    def render(self) -> str:
        return f"{format_path(self.path)}: {self.message}" + (f" (line {self.line})" if self.line else "")


def format_path(parts: tuple) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", str(part)):
            out += ("." if out else "") + str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out or "(root)"


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    return "object" if isinstance(value, dict) else "array" if isinstance(value, list) else type(value).__name__


def to_jsonschema(node: dict[str, Any], *, root: bool = False) -> dict[str, Any]:
    """One node of a Kubernetes structural schema as draft-4 JSON Schema, with the API server's meaning."""
    out = {k: v for k, v in node.items() if k not in _REWRITTEN}
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]  # the CRD spells it anyOf [integer, string]; a string keeps its pattern
    else:
        for key in ("anyOf", "allOf", "oneOf"):
            if key in node:
                out[key] = [to_jsonschema(s) for s in node[key]]
        if isinstance(node.get("not"), dict):
            out["not"] = to_jsonschema(node["not"])
    if node.get("nullable") and "type" in out:
        out["type"] = [*(out["type"] if isinstance(out["type"], list) else [out["type"]]), "null"]
    given = node.get("properties") or {}
    props = {k: to_jsonschema(v) for k, v in given.items()}
    # The server applies defaults before it validates: a required field with a default is never missing.
    required = {r for r in node.get("required", []) if "default" not in given.get(r, {})}
    if node.get("x-kubernetes-embedded-resource"):
        props = {"apiVersion": _STR, "kind": _STR, **props, "metadata": OBJECT_META}
        required |= {"apiVersion", "kind"}
    if root and "metadata" in props:
        props["metadata"] = OBJECT_META
    if props:
        out["properties"] = props
    if required:
        out["required"] = sorted(required)
    if isinstance(node.get("items"), dict):
        out["items"] = to_jsonschema(node["items"])
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = to_jsonschema(extra)
    elif isinstance(extra, bool):
        out["additionalProperties"] = extra
    elif (node.get("type") == "object" or "properties" in node) and not node.get(
            "x-kubernetes-preserve-unknown-fields"):
        # A structural schema prunes unknown fields; Strict field validation (what we check) rejects them.
        out["additionalProperties"] = False
    return out


# --------------------------------------------------------------------------- x-kubernetes-validations (CEL subset)

class CelUnsupported(Exception):
    """The rule needs more CEL than this subset (or is a transition rule on oldSelf): it is skipped, never failed."""


_MISSING = object()
# Outside string literals, CEL's operators and literals become Python's; the rest of the grammar is shared.
_CEL_TOKEN = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|&&|\|\||!=|!|\b(?:true|false|null)\b""")
_CEL_AS_PY = {"&&": " and ", "||": " or ", "!": " not ", "true": "True", "false": "False", "null": "None"}


def cel_compile(rule: str) -> ast.Expression:
    try:
        return ast.parse(_CEL_TOKEN.sub(lambda m: _CEL_AS_PY.get(m.group(), m.group()), rule).strip(), mode="eval")
    except SyntaxError as exc:
        raise CelUnsupported(rule) from exc


def _select(node: ast.expr, obj: Any) -> Any:
    """self.a.b: the value, or _MISSING when a field on the way is absent."""
    if isinstance(node, ast.Name):
        if node.id != "self":
            raise CelUnsupported(node.id)
        return obj
    if not isinstance(node, ast.Attribute):
        raise CelUnsupported(ast.dump(node))
    parent = _select(node.value, obj)
    return parent.get(node.attr, _MISSING) if isinstance(parent, dict) else _MISSING


def cel_eval(node: ast.AST, obj: Any) -> Any:
    """has(), !, &&, ||, ==, !=, in, literals, lists and self.field: enough for KubeRay's own rules."""
    match node:
        case ast.Expression(body=body):
            return cel_eval(body, obj)
        case ast.BoolOp(op=ast.And(), values=values):
            return all(cel_eval(v, obj) is True for v in values)
        case ast.BoolOp(op=ast.Or(), values=values):
            return any(cel_eval(v, obj) is True for v in values)
        case ast.UnaryOp(op=ast.Not(), operand=operand):
            return cel_eval(operand, obj) is not True
        case ast.Compare(left=left, ops=[op], comparators=[right]) if isinstance(op, ast.Eq | ast.NotEq | ast.In):
            a, b = cel_eval(left, obj), cel_eval(right, obj)
            return a == b if isinstance(op, ast.Eq) else a != b if isinstance(op, ast.NotEq) else a in b
        case ast.Call(func=ast.Name(id="has"), args=[ast.Attribute() as arg], keywords=[]):
            return _select(arg, obj) is not _MISSING
        case ast.Constant(value=value):
            return value
        case ast.List(elts=items):
            return [cel_eval(i, obj) for i in items]
        case ast.Name() | ast.Attribute():
            value = _select(node, obj)
            if value is _MISSING:  # CEL raises "no such key" here: do not guess
                raise CelUnsupported("missing field")
            return value
    raise CelUnsupported(ast.dump(node))


_CEL_CACHE: dict[str, ast.Expression | None] = {}


def _cel_keyword(validator: Any, rules: Any, instance: Any, schema: dict) -> Iterator[ValidationError]:
    for rule in rules or []:
        source = rule.get("rule", "")
        if source not in _CEL_CACHE:
            try:
                _CEL_CACHE[source] = cel_compile(source)
            except CelUnsupported:
                _CEL_CACHE[source] = None
        if (compiled := _CEL_CACHE[source]) is None:
            continue
        try:
            ok = cel_eval(compiled, instance)
        except (CelUnsupported, TypeError):
            continue
        if ok is not True:
            sub = [p for p in (rule.get("fieldPath") or "").split(".") if p]
            yield ValidationError(rule.get("message") or f"failed rule: {source}", path=sub,
                                  validator="x-kubernetes-validations")


def _list_type_keyword(validator: Any, list_type: Any, instance: Any, schema: dict) -> Iterator[ValidationError]:
    """x-kubernetes-list-type set/map: no two entries alike (map: alike in their key fields, defaults applied)."""
    if not isinstance(instance, list) or list_type not in ("set", "map"):
        return
    keys = schema.get("x-kubernetes-list-map-keys") or []
    item_props = (schema.get("items") or {}).get("properties") or {}
    first: dict[str, int] = {}
    for i, item in enumerate(instance):
        ident = ({k: item.get(k, item_props.get(k, {}).get("default")) for k in keys}
                 if list_type == "map" and isinstance(item, dict) else item)
        signature = json.dumps(ident, sort_keys=True)
        if signature in first:
            what = (", ".join(f"{k}={json.dumps(v)}" for k, v in ident.items()) if isinstance(ident, dict)
                    else json.dumps(ident))
            yield ValidationError(f"duplicate entry ({what}); first at index {first[signature]}", path=[i],
                                  validator="x-kubernetes-list-type")
        else:
            first[signature] = i


FORMATS = FormatChecker(formats=())
FORMATS.checks("int32")(lambda v: not isinstance(v, int) or isinstance(v, bool) or -(2**31) <= v < 2**31)
FORMATS.checks("int64")(lambda v: not isinstance(v, int) or isinstance(v, bool) or -(2**63) <= v < 2**63)
FORMATS.checks("date-time")(lambda v: not isinstance(v, str) or _RFC3339.fullmatch(v) is not None)
K8sValidator = validators.extend(Draft4Validator, {"x-kubernetes-validations": _cel_keyword,
                                                    "x-kubernetes-list-type": _list_type_keyword})


def issues_from_error(err: ValidationError) -> Iterator[Issue]:
    """A jsonschema error as the messages a person fixes a manifest with."""
    path, keyword, want, value = tuple(err.absolute_path), err.validator, err.validator_value, err.instance
    if keyword == "additionalProperties" and want is False and isinstance(value, dict):
        known = list(err.schema.get("properties") or {})
        for key in value:
            if key in known or any(re.search(p, key) for p in err.schema.get("patternProperties", {})):
                continue
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or [k for k in known
                                                                                 if k.lower() == key.lower()]
            hint = f' (did you mean "{near[0]}"?)' if near else "" if known else " (this object takes no fields)"
            yield Issue(path + (key,), f"unknown field{hint}")
    elif keyword == "required" and isinstance(value, dict):
        yield from (Issue(path + (key,), "required field is missing") for key in want if key not in value)
    elif keyword == "type":
        wanted = want if isinstance(want, list) else [want]
        yield Issue(path, f"expected {' or '.join(w for w in wanted if w != 'null')}, got {describe(value)}")
    elif keyword == "enum":
        yield Issue(path, f"must be one of {', '.join(json.dumps(w) for w in want)}; got {json.dumps(value)}")
    elif keyword == "pattern" and str(want).startswith(_QUANTITY):
        yield Issue(path, f'{json.dumps(value)} is not a Kubernetes quantity (e.g. "500m", "2", "4Gi")')
    elif keyword == "pattern":
        yield Issue(path, f"{json.dumps(value)} does not match pattern {want}")
    elif keyword == "format":
        yield Issue(path, f"{json.dumps(value)} is not a valid {want}" + (" (out of range)" if "int" in want else ""))
    else:
        yield Issue(path, err.message)


def prune_nulls(value: Any, schema: dict[str, Any]) -> None:
    """Drop nulls on known, non-nullable fields in place, as the API server does before it validates."""
    if isinstance(value, dict):
        props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for key in list(value):
            sub = props.get(key) or (extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            types = sub.get("type")
            if value[key] is None and not (isinstance(types, list) and "null" in types):
                del value[key]
            else:
                prune_nulls(value[key], sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            prune_nulls(item, schema["items"])


class CrdStore:
    """The CRDs of one directory by (group, kind); each file is parsed at most once, and only when asked for."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"CRD directory not found: {self.directory}")
        self._index: dict[tuple[str, str], Path] | None = None
        self._parsed: dict[Path, list[dict[str, Any]]] = {}
        self._validators: dict[tuple[str, str, str], Any] = {}

    def _documents(self, path: Path) -> list[dict[str, Any]]:
        if path not in self._parsed:
            with path.open(encoding="utf-8") as fh:
                self._parsed[path] = [d for d in yaml.load_all(fh, Loader=LOADER) if isinstance(d, dict)]
        return self._parsed[path]

    @property
    def index(self) -> dict[tuple[str, str], Path]:
        if self._index is None:
            self._index = {}
            for path in sorted(self.directory.glob("*.y*ml")):
                text = path.read_text(encoding="utf-8")
                # controller-gen sorts keys, so the huge spec.versions comes last: group and kind are found
                # by parsing the text above it, and a CRD nobody validates against is never fully parsed.
                cut = re.search(r"(?m)^  versions:\s*$", text)
                head = yaml.load(text[:cut.start()], Loader=LOADER) if cut and "\n---" not in text[cut.end():] \
                    else None
                docs = [head] if isinstance(head, dict) and (head.get("spec") or {}).get("names") \
                    else self._documents(path)
                for doc in docs:
                    if doc.get("kind") == "CustomResourceDefinition":
                        spec = doc.get("spec") or {}
                        group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
                        if isinstance(group, str) and isinstance(kind, str):  # else nothing can look it up
                            self._index[(group, kind)] = path
        return self._index

    def has(self, group: str, kind: str) -> bool:
        return (group, kind) in self.index

    def version(self, group: str, kind: str, version: str) -> tuple[dict[str, Any] | None, list[str]]:
        """The CRD's entry for `version` (None if absent), and the names of the versions it serves."""
        for doc in self._documents(self.index[(group, kind)]):
            spec = doc.get("spec") or {}
            if spec.get("group") == group and (spec.get("names") or {}).get("kind") == kind:
                versions = spec.get("versions") or []
                served = [v.get("name") for v in versions if v.get("served", True)]
                return next((v for v in versions if v.get("name") == version), None), served
        return None, []

    def validator(self, group: str, kind: str, version: str) -> Any:
        key = (group, kind, version)
        if key not in self._validators:
            entry, _ = self.version(group, kind, version)
            raw = ((entry or {}).get("schema") or {}).get("openAPIV3Schema") or {"type": "object"}
            self._validators[key] = K8sValidator(to_jsonschema(raw, root=True), format_checker=FORMATS)
        return self._validators[key]
