"""Loading a DAG spec (file, YAML/JSON text or dict) and runtime params, reporting every problem at once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from fabric.errors import ErrorCode, Problem, SpecError
from fabric.spec._text import join_path
from fabric.spec.models import MAX_NODES, SKIP_GRAPH_CHECK, DagSpec, RuntimeParams
from fabric.spec.problems import problems_from_validation_error
from fabric.spec.validate import graph_problems

MAX_BYTES = 1 << 20
MAX_ALIASES = 100
# What a document becomes once its aliases are expanded is held to the same budget as its text: a 1.4 KB
# "billion laughs" must not become 11 MB of params. (Without aliases the estimate stays under the text's size.)
MAX_EXPANDED_BYTES = MAX_BYTES
# Nesting deeper than this (from the document's root) is refused with the path: deeper values break
# serialization (pydantic stops at a few hundred levels) and no real spec comes near it.
MAX_DEPTH = 64
_SPEC_SUFFIXES = (".yaml", ".yml", ".json")
_YAML = "tag:yaml.org,2002:"
_ALLOWED_TAGS = frozenset(_YAML + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge"))


class _Rejected(Exception):
    """A document refused before it becomes data; carries the Problem fields."""

    def __init__(self, code: ErrorCode, message: str, fix: str, mark: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.fix, self.mark = code, message, fix, mark


if TYPE_CHECKING:  # what the mixin extends: PyYAML's composer and a parser (pure or libyaml)
    from yaml import SafeLoader as _LoaderBase
else:
    _LoaderBase = object


class _SpecLoaderMixin(_LoaderBase):
    """Allows only plain tags, bounds aliases and expansion, and rejects duplicate keys."""

    # Dates stay strings ("2025-10-29" is a label value, not a datetime).
    yaml_implicit_resolvers = {
        first: [(tag, regex) for tag, regex in resolvers if tag != _YAML + "timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _aliases: int
    _checked: set[int]

    def _init_limits(self) -> None:
        self._aliases = 0
        self._checked = set()

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Rejected(ErrorCode.SPEC_TOO_LARGE,
                                f"the document uses more than {MAX_ALIASES} YAML aliases",
                                "write the values out instead of using many '*alias' references",
                                event.start_mark)
        else:
            tag = getattr(event, "tag", None)
            if tag not in (None, "!") and tag not in _ALLOWED_TAGS:
                raise _Rejected(ErrorCode.SPEC_PARSE, f"YAML tag {tag!r} is not allowed in a spec",
                                "remove the tag: a spec holds only plain strings, numbers, booleans, lists "
                                "and mappings", event.start_mark)
        return super().compose_node(parent, index)

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expansion(node)
        return node

    def flatten_mapping(self, node: Any) -> None:
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _YAML + "merge":
                    if key_node.value in seen:
                        raise _Rejected(ErrorCode.SPEC_PARSE, f"duplicate key {key_node.value!r}",
                                        "remove one of the two entries", key_node.start_mark)
                    seen.add(key_node.value)
        super().flatten_mapping(node)


class _PureSpecLoader(_SpecLoaderMixin, yaml.SafeLoader):
    """The spec loader on PyYAML's pure-Python scanner and parser."""

    def __init__(self, stream: str) -> None:
        yaml.SafeLoader.__init__(self, stream)
        self._init_limits()


_SpecLoader: type[Any] = _PureSpecLoader
if yaml.__with_libyaml__:  # pragma: no branch - libyaml only speeds up parsing; the checks are the same
    from yaml.cyaml import CParser

    class _FastSpecLoader(_SpecLoaderMixin, Composer, SafeConstructor, Resolver, CParser):
        """The spec loader on libyaml's parser (about 3x faster), with PyYAML's Python composer and checks."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self._init_limits()

    _SpecLoader = _FastSpecLoader


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: Any) -> None:
    """Refuse recursive aliases and documents that expand past MAX_EXPANDED_BYTES (billion laughs)."""
    if root is None:
        return
    sizes: dict[int, int] = {}  # a node's size once expanded, in bytes (about: a scalar's length, plus 1)
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            sizes[key] = 1 + own + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_EXPANDED_BYTES:
                message = f"the document expands to more than {MAX_EXPANDED_BYTES} bytes through aliases"
                raise _Rejected(ErrorCode.SPEC_TOO_LARGE, message,
                                "write the values out instead of nesting aliases", node.start_mark)
            continue
        if key in sizes:
            continue
        if key in active:
            raise _Rejected(ErrorCode.SPEC_PARSE, "a YAML alias refers to itself (recursive structure)",
                            "remove the recursive alias", node.start_mark)
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


_LEAVES = frozenset({str, int, float, bool, type(None), bytes})


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> str | None:
    """The path of the first value nested deeper than `limit`, or None. (Recursive, but never deeper
    than `limit`: any input is safe.)"""

    def walk(item: Any, depth: int) -> list[Any] | None:
        if depth > limit:
            return []
        pairs = item.items() if isinstance(item, Mapping) else enumerate(item)
        for key, child in pairs:
            if type(child) in _LEAVES:  # most values of a large spec: no abstract-class check for them
                continue
            if isinstance(child, dict | list | tuple | Mapping):
                found = walk(child, depth + 1)
                if found is not None:
                    found.append(key if isinstance(key, int) and isinstance(item, list | tuple) else str(key)[:64])
                    return found
        return None

    if not isinstance(value, dict | list | tuple | Mapping):
        return None
    path = walk(value, 0)
    return None if path is None else join_path(path[::-1])


def _check_depth(raw: Any, where: str = "") -> None:
    path = _too_deep(raw)
    if path is not None:
        where = f"{where}.{path}" if where and not path.startswith("[") else where + path
        raise _fail(ErrorCode.SPEC_TOO_LARGE, where, f"the value is nested more than {MAX_DEPTH} levels deep",
                    "flatten the structure (pass large or deep parameters as a file referenced by URI)")


def _at(name: str, line: int, column: int) -> str:
    text = f"line {line}, column {column}"
    return f"{name}, {text}" if name else text


def _fail(code: ErrorCode, where: str, message: str, fix: str) -> SpecError:
    return SpecError.from_problems([Problem(code, where, message, fix)])


def _parse_yaml(text: str, name: str) -> Any:
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        return loader.construct_document(node) if node is not None else None
    except _Rejected as exc:
        where = _at(name, exc.mark.line + 1, exc.mark.column + 1) if exc.mark else name
        raise _fail(exc.code, where, exc.message, exc.fix) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _at(name, mark.line + 1, mark.column + 1) if mark else name
        problem = exc.problem or "invalid YAML"
        if "expected a single document" in f"{exc.context} {problem}":
            raise _fail(ErrorCode.SPEC_PARSE, where, "the text holds several YAML documents",
                        "a spec must be one document: remove '---' and the extra documents") from None
        context = f"{exc.context}: " if exc.context else ""
        raise _fail(ErrorCode.SPEC_PARSE, where, f"invalid YAML: {context}{problem}",
                    "fix the YAML syntax at this position") from None
    except yaml.YAMLError as exc:
        raise _fail(ErrorCode.SPEC_PARSE, name, f"invalid YAML: {exc}", "fix the YAML syntax") from None
    except RecursionError:
        raise _fail(ErrorCode.SPEC_TOO_LARGE, name, "the document is nested too deeply",
                    "flatten the structure") from None
    except ValueError as exc:  # e.g. an integer literal with too many digits
        raise _fail(ErrorCode.SPEC_PARSE, name, f"invalid value: {exc}", "fix the value") from None
    finally:
        loader.dispose()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Rejected(ErrorCode.SPEC_PARSE, f"duplicate key {key!r}", "remove one of the two entries")
        result[key] = value
    return result


def _parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise _fail(ErrorCode.SPEC_PARSE, _at(name, exc.lineno, exc.colno), f"invalid JSON: {exc.msg}",
                    "fix the JSON syntax at this position") from None
    except _Rejected as exc:
        raise _fail(exc.code, name, exc.message, exc.fix) from None
    except RecursionError:
        raise _fail(ErrorCode.SPEC_TOO_LARGE, name, "the document is nested too deeply",
                    "flatten the structure") from None
    except ValueError as exc:
        raise _fail(ErrorCode.SPEC_PARSE, name, f"invalid value: {exc}", "fix the value") from None


def _parse_text(text: str, name: str, json_only: bool) -> Mapping[str, Any]:
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise _fail(ErrorCode.SPEC_TOO_LARGE, name, f"the spec is larger than {MAX_BYTES} bytes",
                    "split the pipeline or move large parameters to files referenced by URI")
    if json_only:
        data = _parse_json(text, name)
    elif text.lstrip().startswith("{"):
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except (ValueError, _Rejected, RecursionError):
            data = _parse_yaml(text, name)  # flow-style YAML, or report the error with a YAML position
    else:
        data = _parse_yaml(text, name)
    if not isinstance(data, Mapping):
        got = "nothing" if data is None else type(data).__name__
        raise _fail(ErrorCode.SPEC_PARSE, name, f"the top level must be a mapping, got {got}",
                    "start the document with 'version: 1' and 'pipeline_id: ...'")
    return data


def _read_file(path: Path) -> Mapping[str, Any]:
    name = str(path)
    try:
        if not path.is_file():
            raise _fail(ErrorCode.SPEC_PARSE, name, "no such spec file", "check the path")
        if path.stat().st_size > MAX_BYTES:
            raise _fail(ErrorCode.SPEC_TOO_LARGE, name, f"the spec file is larger than {MAX_BYTES} bytes",
                        "split the pipeline or move large parameters to files referenced by URI")
        data = path.read_bytes()
    except OSError as exc:
        message = f"cannot read the spec file: {exc}"
        raise _fail(ErrorCode.SPEC_PARSE, name, message, "check the path") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(ErrorCode.SPEC_PARSE, name, f"the file is not UTF-8: {exc}", "save it as UTF-8") from None
    return _parse_text(text, name, json_only=path.suffix.lower() == ".json")


def _read_source(source: Any) -> Mapping[str, Any]:
    if isinstance(source, Path):
        return _read_file(source)
    if isinstance(source, bytes | bytearray):
        try:
            source = bytes(source).decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"the spec is not UTF-8: {exc}"
            raise _fail(ErrorCode.SPEC_PARSE, "", message, "encode it as UTF-8") from None
    if isinstance(source, str):
        stripped = source.strip()
        if "\n" not in stripped and stripped.lower().endswith(_SPEC_SUFFIXES):
            return _read_file(Path(stripped).expanduser())
        return _parse_text(source, "", json_only=False)
    raise _fail(ErrorCode.SPEC_PARSE, "", f"cannot load a spec from a {type(source).__name__}",
                "pass a path, YAML or JSON text, a dict or a DagSpec")


def read_document(source: Any, name: str = "dag_spec") -> dict[str, Any]:
    """The raw mapping of a spec sent over the wire (`name` is its field): a mapping, or YAML/JSON text.
    Text is only ever a document, never a path: a gateway must not open files its callers name."""
    if isinstance(source, bytes | bytearray):
        try:
            source = bytes(source).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(ErrorCode.SPEC_PARSE, name, f"the spec is not UTF-8: {exc}", "encode it as UTF-8") from None
    if isinstance(source, str):
        stripped = source.strip()
        if "\n" not in stripped and stripped.lower().endswith(_SPEC_SUFFIXES):
            raise _fail(ErrorCode.SPEC_PARSE, name, "a path is not a spec here: the file is never opened",
                        "send the document itself (its YAML/JSON text, or a JSON object), e.g. `fabric submit "
                        "FILE --address http://...` reads the file on your side")
        raw = _parse_text(source, name, json_only=False)
    elif isinstance(source, Mapping):
        raw = source
    else:
        raise _fail(ErrorCode.SPEC_PARSE, name, f"a spec is a mapping or YAML/JSON text, not a {type(source).__name__}",
                    "send the spec document")
    _check_depth(raw, name)
    return dict(raw)


def read_spec(source: DagSpec | Mapping[str, Any] | Path | str | bytes) -> dict[str, Any]:
    """The raw mapping of a spec from a path, YAML/JSON text, a dict or a DagSpec, parsed safely but not
    validated (for a caller that hands it to a validating service)."""
    if isinstance(source, DagSpec):
        return source.to_dict()
    return dict(source) if isinstance(source, Mapping) else dict(_read_source(source))


def load_spec(source: DagSpec | Mapping[str, Any] | Path | str | bytes) -> DagSpec:
    """A validated DagSpec from a path, YAML/JSON text, a dict or a DagSpec; SpecError lists ALL problems."""
    if isinstance(source, DagSpec):
        return source
    raw = source if isinstance(source, Mapping) else _read_source(source)
    _check_depth(raw)
    nodes = raw.get("nodes")
    if isinstance(nodes, list) and len(nodes) > MAX_NODES:
        message = f"the spec has {len(nodes)} nodes, more than {MAX_NODES}"
        raise _fail(ErrorCode.SPEC_TOO_LARGE, "nodes", message, "split the pipeline into several DAGs")
    problems: list[Problem] = []
    spec: DagSpec | None = None
    try:
        spec = DagSpec.model_validate(dict(raw), context={SKIP_GRAPH_CHECK: True})
    except ValidationError as exc:
        problems.extend(problems_from_validation_error(exc, DagSpec, ErrorCode.SPEC_FIELD))
    problems.extend(graph_problems(raw))
    if problems or spec is None:
        raise SpecError.from_problems(problems)
    return spec


def parse_runtime_params(raw: Mapping[str, Any] | RuntimeParams | None) -> RuntimeParams:
    """Validated RuntimeParams (empty ones for None); SpecError lists ALL problems."""
    if raw is None:
        return RuntimeParams()
    if isinstance(raw, RuntimeParams):
        return raw
    if not isinstance(raw, Mapping):
        raise SpecError.from_problems([Problem(
            ErrorCode.RUNTIME_PARAMS, "", f"runtime params must be a mapping, got {type(raw).__name__}",
            "pass a dict like {'submission_id': 'sub-001', 'env': 'staging'}")], what="runtime params")
    try:
        return RuntimeParams.model_validate(dict(raw))
    except ValidationError as exc:
        problems = problems_from_validation_error(exc, RuntimeParams, ErrorCode.RUNTIME_PARAMS)
        raise SpecError.from_problems(problems, what="runtime params") from None
