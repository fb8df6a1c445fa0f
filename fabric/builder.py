"""Build DAGs in Python: `@fb.task` functions called inside `with fb.DAG(...)` give the same spec as YAML."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fabric.errors import ErrorCode, FabricError
from fabric.spec import DagSpec, load_spec
from fabric.spec.expr import names, parse

_current_dag: contextvars.ContextVar[DAG | None] = contextvars.ContextVar("fabric_dag", default=None)
_conditions: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("fabric_when", default=())
_scope: contextvars.ContextVar[str] = contextvars.ContextVar("fabric_dag_scope", default="")  # "<step>." prefix


@contextlib.contextmanager
def when(condition: str) -> Iterator[None]:
    """`with fb.when("best_sharpe > 0"):` gives the tasks called inside it this `when:` condition (docs/spec.md
    #conditions-when); nested blocks are and-ed. A syntax error is raised here, at the line that wrote it."""
    parse(condition)  # ExprError (a ValueError) now, rather than a SpecError at to_spec()
    token = _conditions.set((*_conditions.get(), condition))
    try:
        yield
    finally:
        _conditions.reset(token)


@dataclass(frozen=True)
class Output:
    """A future value: output `out` of node `node_id`, to pass to another task's parameter."""

    node_id: str
    out: str


class Outputs(Mapping[str, Output]):
    """The outputs of a task with several outs: `res["model"]` or `res.model`."""

    def __init__(self, node_id: str, outs: tuple[str, ...]) -> None:
        self._items = {o: Output(node_id, o) for o in outs}

    def __getitem__(self, key: str) -> Output:
        return self._items[key]

    def __getattr__(self, key: str) -> Output:
        try:
            return self._items[key]
        except KeyError:
            raise AttributeError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class TaskOptions:
    id: str | None = None
    cpu: float | str | None = None
    gpu: float | None = None
    mem: str | int | None = None
    gpu_mem: str | int | None = None
    outs: tuple[str, ...] = ()
    max_runtime: str | float | None = None
    max_attempts: int | None = None
    backoff_sec: float | None = None
    cache: bool = False
    pool: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    when: str | None = None  # and-ed with the conditions of the `fb.when` blocks it is called in
    on_skipped: str = "skip"


class TaskFunction:
    """A function made a fabric task. Inside `with fb.DAG(...)`, calling it adds a node and returns
    its Output(s); outside a DAG it is the plain function, so it stays easy to test."""

    def __init__(self, function: Callable[..., Any], options: TaskOptions) -> None:
        self.function = function
        self.options = options
        self.__name__ = getattr(function, "__name__", "task")
        self.__doc__ = function.__doc__
        self._signature = inspect.signature(function)

    def with_options(self, **changes: Any) -> TaskFunction:
        if "outs" in changes:
            changes["outs"] = tuple(changes["outs"])
        if "env" in changes:
            changes["env"] = tuple(sorted(dict(changes["env"]).items()))
        return TaskFunction(self.function, replace(self.options, **changes))

    @property
    def entrypoint(self) -> str:
        # A nested function's qualname has `<locals>`; it travels by value, so the name is only a key.
        return f"{self.function.__module__}:{self.function.__qualname__.replace('.<locals>', '')}"

    @property
    def is_inline(self) -> bool:
        """Code from `__main__` (a notebook or script) or defined inside a function cannot be imported by
        workers: it is shipped by value."""
        module = sys.modules.get(self.function.__module__)
        return (self.function.__module__ == "__main__" or getattr(module, "__file__", None) is None
                or "<locals>" in self.function.__qualname__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        dag = _current_dag.get()
        if dag is None:
            return self.function(*args, **kwargs)
        return dag._add(self, self._signature.bind(*args, **kwargs).arguments)

    def map(self, items: Any, *, over: str | None = None, max_parallel: int | None = None,
            min_success_ratio: float | None = None, batch_size: int | None = None, **kwargs: Any) -> Any:
        """Inside a DAG: a `map` node, one child per item of `items` (an upstream output) passed as parameter
        `over` (default: the first), the other parameters as keywords; its output is the children's outputs in
        item order. Outside a DAG: the plain function applied to each item."""
        name = over or next(iter(self._signature.parameters))
        dag = _current_dag.get()
        if dag is None:
            return [self.function(**{name: item}, **kwargs) for item in items]
        if not isinstance(items, Output):
            raise FabricError(f"{self.__name__}.map() fans out over an upstream task's output, not a "
                              f"{type(items).__name__}", code=ErrorCode.SPEC_FIELD, where=f"{self.__name__}.map",
                              fix="pass another task's output: a list, or a table whose rows are the items")
        arguments = self._signature.bind(**{name: items}, **kwargs).arguments
        spec = {"over": name, "max_parallel": max_parallel, "min_success_ratio": min_success_ratio,
                "batch_size": batch_size}
        return dag._add(self, arguments, {k: v for k, v in spec.items() if v is not None})


def task(function: Callable[..., Any] | None = None, *, id: str | None = None, cpu: float | str | None = None,
         gpu: float | None = None, mem: str | int | None = None, gpu_mem: str | int | None = None,
         outs: list[str] | tuple[str, ...] = (), max_runtime: str | float | None = None,
         max_attempts: int | None = None, backoff_sec: float | None = None, cache: bool = False,
         pool: str | None = None, env: Mapping[str, str] | None = None, when: str | None = None,
         on_skipped: str = "skip") -> Any:
    """Decorator: `@fb.task` or `@fb.task(cpu=1, gpu=0.5, outs=["model", "metrics"])`."""
    options = TaskOptions(id=id, cpu=cpu, gpu=gpu, mem=mem, gpu_mem=gpu_mem, outs=tuple(outs),
                          max_runtime=max_runtime, max_attempts=max_attempts, backoff_sec=backoff_sec,
                          cache=cache, pool=pool, env=tuple(sorted((env or {}).items())), when=when,
                          on_skipped=on_skipped)
    if function is not None:
        return TaskFunction(function, options)
    return lambda f: TaskFunction(f, options)


class DagFunction:
    """A `@fb.dag` function: called inside another DAG it is one step, its tasks nested as `<name>.<task>` (as a
    `pipeline` node's are); called outside any DAG it builds and returns its own `fb.DAG`."""

    def __init__(self, function: Callable[..., Any], name: str | None = None) -> None:
        self.function = function
        self.name: str = name or str(getattr(function, "__name__", "dag"))
        self.__name__, self.__doc__ = self.name, function.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        parent = _current_dag.get()
        if parent is None:
            with DAG(self.name) as built:
                self.function(*args, **kwargs)
            return built
        step = parent._unique_id(_scope.get() + self.name)  # a second call of the same step: "<name>_2"
        token = _scope.set(step + ".")
        try:
            return self.function(*args, **kwargs)
        finally:
            _scope.reset(token)


def dag(function: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Decorator: `@fb.dag` or `@fb.dag(name="sweep")`, a DAG usable as a step of another DAG."""
    if function is not None:
        return DagFunction(function, name)
    return lambda f: DagFunction(f, name)


class DAG:
    """`with fb.DAG("my_pipeline") as dag:` then call tasks; `dag.to_spec()` is a validated DagSpec."""

    def __init__(self, pipeline_id: str, *, description: str | None = None,
                 slo: Mapping[str, Any] | None = None, default_resources: Mapping[str, Any] | None = None) -> None:
        self.pipeline_id = pipeline_id
        self.description = description
        self.slo = dict(slo) if slo else None
        self.default_resources = dict(default_resources) if default_resources else None
        self._nodes: list[dict[str, Any]] = []
        self._edges: list[dict[str, str]] = []
        self._inline: dict[str, Callable[..., Any]] = {}
        self._token: contextvars.Token[DAG | None] | None = None

    def __enter__(self) -> DAG:
        self._token = _current_dag.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _current_dag.reset(self._token)

    def _add(self, fn: TaskFunction, arguments: Mapping[str, Any], mapped: Mapping[str, Any] | None = None
             ) -> Output | Outputs:
        opts = fn.options
        base = opts.id or fn.__name__
        node_id = self._unique_id(_scope.get() + base)  # inside a @fb.dag step: "<step>.<task>"
        # a step's outs are its own (two calls of one step must not produce the same out): "<step>_<out>"
        outs = tuple(_scope.get().replace(".", "_") + out for out in opts.outs) or (node_id.replace(".", "_"),)
        node: dict[str, Any] = {"id": node_id, "kind": "python_task", "entrypoint": fn.entrypoint}
        params, ins = {}, []
        for name, value in arguments.items():
            if isinstance(value, Output):
                ins.append(name if name == value.out else f"{name}={value.out}")
                edge = {"from": value.node_id, "to": node_id}
                if edge not in self._edges:
                    self._edges.append(edge)
            else:
                _require_json(node_id, name, value)
                params[name] = value
        if params:
            node["params"] = params
        if ins:
            node["ins"] = ins
        node["outs"] = list(outs)
        resources = {k: v for k, v in (("cpu", opts.cpu), ("gpu", opts.gpu), ("mem", opts.mem),
                                       ("gpu_mem", opts.gpu_mem)) if v is not None}
        if resources:
            node["resources"] = resources
        slo: dict[str, Any] = {}
        if opts.max_runtime is not None:
            slo["max_runtime"] = opts.max_runtime
        retry = {k: v for k, v in (("max_attempts", opts.max_attempts), ("backoff_sec", opts.backoff_sec))
                 if v is not None}
        if retry:
            slo["retry"] = retry
        if slo:
            node["slo"] = slo
        if opts.cache:
            node["cache"] = True
        if opts.pool:
            node["pool"] = opts.pool
        if opts.env:
            node["env"] = dict(opts.env)
        conditions = (*_conditions.get(), *((opts.when,) if opts.when else ()))
        if conditions:
            node["when"] = conditions[0] if len(conditions) == 1 else " and ".join(f"({c})" for c in conditions)
            self._condition_edges(node_id, node["when"])
        if opts.on_skipped != "skip":
            node["on_skipped"] = opts.on_skipped
        if mapped:
            node["map"] = dict(mapped)
        self._nodes.append(node)
        if fn.is_inline:
            self._inline[fn.entrypoint] = fn.function
        return Output(node_id, outs[0]) if len(outs) == 1 else Outputs(node_id, outs)

    def _condition_edges(self, node_id: str, condition: str) -> None:
        """What a condition reads is a dependency: an edge from the node that produces it (or that it names)."""
        for name in names(parse(condition)):
            root = name.parts[0]
            producers = [n["id"] for n in self._nodes if n["id"] == root or root in n.get("outs", ())]
            if len(producers) == 1 and {"from": producers[0], "to": node_id} not in self._edges:
                self._edges.append({"from": producers[0], "to": node_id})

    def _unique_id(self, base: str) -> str:
        # every dotted prefix is taken too: a step's name ("sweep" of "sweep.grid") is not reused
        taken = {".".join(parts[:k]) for n in self._nodes for parts in (n["id"].split("."),)
                 for k in range(1, len(parts) + 1)}
        if base not in taken:
            return base
        n = 2
        while f"{base}_{n}" in taken:
            n += 1
        return f"{base}_{n}"

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"version": 1, "pipeline_id": self.pipeline_id}
        if self.description:
            spec["description"] = self.description
        if self.slo:
            spec["slo"] = self.slo
        if self.default_resources:
            spec["resources"] = {"default": self.default_resources}
        spec["nodes"] = self._nodes
        if self._edges:
            spec["edges"] = self._edges
        return spec

    def to_spec(self) -> DagSpec:
        return load_spec(self.to_dict())

    def to_yaml(self) -> str:
        return self.to_spec().to_yaml()

    def inline_code(self) -> dict[str, bytes]:
        """Entrypoint -> the function pickled by value, for tasks defined in a notebook or script."""
        if not self._inline:
            return {}
        from ray import cloudpickle

        return {entry: cloudpickle.dumps(fn) for entry, fn in self._inline.items()}


def _require_json(node_id: str, name: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise FabricError(
            f"parameter {name!r} of task {node_id!r} is a {type(value).__name__}, which a spec cannot hold",
            code=ErrorCode.SPEC_FIELD, where=f"{node_id}.params.{name}",
            fix="pass data through another task's output, or as a JSON value (str, number, list, dict)",
        ) from None
