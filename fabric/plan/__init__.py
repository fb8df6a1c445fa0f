"""Pure compilation of a DAG spec into an execution plan: order, wiring, resources, hashes."""

from fabric.plan.compile import compile_plan, kind_problems, resource_unit
from fabric.plan.model import RESULT_SLOT, ExecutionPlan, InputWire, NodePlan, ResourceUnit, RetryPolicy

__all__ = ["RESULT_SLOT", "ExecutionPlan", "InputWire", "NodePlan", "ResourceUnit", "RetryPolicy",
           "compile_plan", "kind_problems", "resource_unit"]
