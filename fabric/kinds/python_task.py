"""Kind `python_task`: call `package.module:function` with params and inputs as keyword arguments."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from fabric.errors import Problem
from fabric.kinds.base import NodeCall, params_problem
from fabric.spec import NodeSpec

ENTRYPOINT = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class PythonTask:
    name = "python_task"

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        problems = []
        if not node.entrypoint:
            problems.append(params_problem(f"{where}.entrypoint", f"python_task {node.id!r} has no entrypoint",
                                           "set entrypoint: 'package.module:function'"))
        elif not ENTRYPOINT.match(node.entrypoint):
            problems.append(params_problem(f"{where}.entrypoint",
                                           f"entrypoint {node.entrypoint!r} is not 'package.module:function'",
                                           "write it as 'package.module:function'"))
        clash = sorted(set(node.params) & {entry.partition("=")[0] for entry in node.ins})
        if clash:
            problems.append(params_problem(f"{where}.params",
                                           f"params {clash} have the same names as ins",
                                           "rename the params or the ins: both become keyword arguments"))
        return problems

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        assert call.entrypoint is not None
        function = load_entrypoint(call.entrypoint)
        return function(**call.params, **inputs)


@lru_cache(maxsize=256)
def load_entrypoint(entrypoint: str) -> Callable[..., Any]:
    module_name, _, attr_path = entrypoint.partition(":")
    target: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        target = getattr(target, attr)
    if not callable(target):
        raise TypeError(f"entrypoint {entrypoint!r} is not callable")
    return target
