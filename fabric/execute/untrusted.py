"""What the control plane's processes accept from tenant processes: attempt reports as plain data (msgpack of
primitives, checked field by field), and no Python object outside fabric's own plain classes unpickled there.

Unpickling runs code: an object's `__reduce__` names any callable and its arguments, and the unpickler calls it.
A node's worker (tenant code) makes the bytes of its report, its error and any argument it passes to an actor
method, and Ray unpickles all of them in the receiving process. In the registry, the quota actors and the head
sink, which hold the control key (docs/security.md), `harden()` swaps Ray's unpickler for `safe_loads`, which
builds only containers, numbers, strings, fabric's dataclasses, enums and errors, and Ray's own errors and refs.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import io
import pickle
import sys
from collections.abc import Mapping
from typing import Any

from fabric.errors import ErrorCode
from fabric.types import AttemptReport, ErrorInfo

UNSAFE_PAYLOAD = str(ErrorCode.UNSAFE_PAYLOAD)  # the error type of an attempt whose report the registry refused

Outcome = tuple[AttemptReport, ErrorInfo | None]

_BUILTINS = frozenset({"set", "frozenset", "bytearray", "complex", "slice", "range"})
_EXACT = frozenset({
    ("collections", "OrderedDict"),
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("fabric.errors", "_rebuild"),  # FabricError.__reduce__: cls(message, code, where, fix, problems)
    ("ray._private.serialization", "_object_ref_deserializer"),  # an ObjectRef inside an argument
    ("ray._private.serialization", "_actor_handle_deserializer"),
})


class UnsafePayload(pickle.UnpicklingError):
    """A pickle that names something the control plane does not build (a callable, a class it does not know)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{UNSAFE_PAYLOAD}: the control plane does not unpickle {what}: it accepts plain data "
                         "only (containers, numbers, strings, fabric's own records)")
        self.what = what


def allowed(module: str, name: str) -> bool:
    """Whether the control plane's unpickler may build `module.name`: an exact entry above, a builtin container or
    exception, Ray's exceptions, or a dataclass, enum or exception defined in a fabric module. Never a dotted name
    (`fabric.x:os.system` walks out of the module) and never another function."""
    if "." in name or name.startswith("_") and (module, name) not in _EXACT:
        return False
    if (module, name) in _EXACT:
        return True
    if module == "builtins":
        found = getattr(builtins, name, None)
        return name in _BUILTINS or (isinstance(found, type) and issubclass(found, BaseException))
    if module == "ray.exceptions" or module == "fabric" or module.startswith("fabric."):
        owner = sys.modules.get(module)
        if owner is None:
            if module == "ray.exceptions":
                return False
            try:  # fabric's own modules only: importing one runs fabric's code, never a tenant's
                __import__(module)
            except ImportError:
                return False
            owner = sys.modules[module]
        found = getattr(owner, name, None)
        if not isinstance(found, type) or found.__module__ != module:
            return False
        if issubclass(found, BaseException):
            return True
        return module != "ray.exceptions" and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum))
    return False


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if not allowed(module, name):
            raise UnsafePayload(f"{module}.{name}")
        return super().find_class(module, name)


def safe_loads(data: Any, /, *, buffers: Any = None, **_: Any) -> Any:
    """`pickle.loads` that builds only what `allowed` lets through (UnsafePayload otherwise)."""
    return _Unpickler(io.BytesIO(data), buffers=buffers).load()


_hardened = False


def harden() -> None:
    """In this process, every object Ray deserializes (actor arguments, task results, task errors) goes through
    `safe_loads`: called by the control plane's actors (execute/sealed.py) before they take a call. A refused
    argument fails that call; a refused result or error reaches the engine as an UNSAFE_PAYLOAD failure."""
    global _hardened
    if _hardened:
        return
    import types

    import ray._private.function_manager
    import ray.cloudpickle

    # Ray's function manager loads the actor classes and remote functions this process calls (its own code, and
    # the classes behind the handles it gets, e.g. a team's quota actor) with the same module's `loads`: it keeps
    # the real one, or a handle would come back without its methods' signatures (prove() then failed with
    # "too many positional arguments" and the team was held for ever).
    ray._private.function_manager.pickle = types.SimpleNamespace(  # type: ignore[assignment]
        loads=ray.cloudpickle.loads, dumps=ray.cloudpickle.dumps)
    # ray._private.serialization and ray.exceptions call `ray.cloudpickle.loads` through the module at each use:
    # objects (arguments, results, errors) go through safe_loads.
    ray.cloudpickle.loads = safe_loads
    _hardened = True


# -- the attempt report as plain data ------------------------------------------------------------------------

class ReportInvalid(ValueError):
    """A report that is not the plain shape below (a field of the wrong type, a truncated payload)."""


def _report_fields(report: AttemptReport) -> list[Any]:
    digests = {str(k): str(v) for k, v in report.digests.items()} if report.digests is not None else None
    return [_num(report.started_at), _num(report.ended_at), str(report.log_tail), report.log_path and str(
        report.log_path), _num(report.progress), str(report.message), digests, str(report.skipped)]


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _outcome_fields(outcome: Outcome) -> list[Any]:
    report, error = outcome
    return [_report_fields(report),
            None if error is None else [str(error.type), str(error.message), str(error.traceback)]]


def encode_report(report: AttemptReport) -> bytes:
    """What a worker returns for a successful attempt (execute/worker.py)."""
    import msgpack

    return msgpack.packb(_report_fields(report), use_bin_type=True)


def encode_outcomes(outcomes: list[Outcome]) -> bytes:
    """A fused task's members' outcomes, in order (execute/chain.py)."""
    import msgpack

    return msgpack.packb([_outcome_fields(o) for o in outcomes], use_bin_type=True)


def encode_chain_items(items: list[tuple[str, int, Outcome]]) -> bytes:
    """Members done while their fused task runs, as (node, attempt, outcome) (the registry's `chain_report`)."""
    import msgpack

    return msgpack.packb([[str(n), int(a), _outcome_fields(o)] for n, a, o in items], use_bin_type=True)


def _unpack(data: Any) -> Any:
    import msgpack

    if not isinstance(data, bytes | bytearray | memoryview):
        raise ReportInvalid(f"a report is bytes, not {type(data).__name__}")
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - every malformed payload is the same refusal
        raise ReportInvalid(f"the report is not msgpack ({type(exc).__name__})") from None


def _opt_num(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportInvalid(f"report.{field} is {type(value).__name__}, not a number")
    return float(value)


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ReportInvalid(f"report.{field} is {type(value).__name__}, not a string")
    return value


def _report(fields: Any) -> AttemptReport:
    if not isinstance(fields, list) or len(fields) not in (7, 8):
        raise ReportInvalid("a report is a list of 8 fields")
    started, ended, tail, log_path, progress, message, digests, *skipped = fields
    if digests is not None and not (isinstance(digests, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in digests.items())):
        raise ReportInvalid("report.digests is not a map of strings")
    return AttemptReport(started_at=_opt_num(started, "started_at"), ended_at=_opt_num(ended, "ended_at"),
                         log_tail=_str(tail, "log_tail"),
                         log_path=None if log_path is None else _str(log_path, "log_path"),
                         progress=_opt_num(progress, "progress"), message=_str(message, "message"),
                         digests=dict(digests) if digests is not None else None,
                         skipped=_str(skipped[0], "skipped") if skipped else "")


def _outcome(fields: Any) -> Outcome:
    if not isinstance(fields, list) or len(fields) != 2:
        raise ReportInvalid("an outcome is [report, error]")
    report, error = fields
    if error is None:
        return _report(report), None
    if not isinstance(error, list) or len(error) != 3:
        raise ReportInvalid("an error is [type, message, traceback]")
    return _report(report), ErrorInfo(_str(error[0], "error.type"), _str(error[1], "error.message"),
                                      _str(error[2], "error.traceback"))


def decode_report(data: Any) -> AttemptReport:
    return _report(_unpack(data))


def decode_outcomes(data: Any, members: int) -> list[Outcome]:
    fields = _unpack(data)
    if not isinstance(fields, list) or len(fields) != members:
        raise ReportInvalid(f"a fused task of {members} members reports {members} outcomes")
    return [_outcome(f) for f in fields]


def decode_chain_items(data: Any) -> list[tuple[str, int, Outcome]]:
    items = _unpack(data)
    if not isinstance(items, list):
        raise ReportInvalid("chain items are a list")
    decoded = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], int) and not isinstance(item[1], bool)):
            raise ReportInvalid("a chain item is [node, attempt, outcome]")
        decoded.append((item[0], item[1], _outcome(item[2])))
    return decoded


def refused(why: str) -> Outcome:
    """The outcome of an attempt whose report or error the registry would not open: a failure that says so."""
    return AttemptReport(), ErrorInfo(UNSAFE_PAYLOAD, f"the attempt's report was refused: {why}"[:2000],
                                      "the control plane accepts plain data only from a node's worker "
                                      "(docs/security.md): a node's values go to its consumers, never to the "
                                      "registry; an error that escapes the node must be a plain exception")


__all__ = ["UNSAFE_PAYLOAD", "ReportInvalid", "UnsafePayload", "allowed", "decode_chain_items", "decode_outcomes",
           "decode_report", "encode_chain_items", "encode_outcomes", "encode_report", "harden", "refused",
           "safe_loads"]
