"""What the control plane opens of a tenant's bytes: the attempt report as checked plain data, and a restricted
unpickler for everything Ray deserializes in its processes (fabric/execute/untrusted.py, docs/security.md)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import msgpack
import pytest

from fabric.errors import ErrorCode, FabricError
from fabric.execute import untrusted
from fabric.execute.backend import chain_outcomes, outcome
from fabric.execute.untrusted import (
    UNSAFE_PAYLOAD,
    ReportInvalid,
    UnsafePayload,
    decode_chain_items,
    decode_outcomes,
    decode_report,
    encode_chain_items,
    encode_outcomes,
    encode_report,
    safe_loads,
)
from fabric.execute.worker import NodeFailure
from fabric.schedule.admission import Request
from fabric.schedule.grants import TeamGrants
from fabric.types import AttemptReport, ErrorInfo


class Evil:
    """What tenant code can send: unpickling it runs `exec` with code that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class EvilError(BaseException):
    """An error that escapes a node's own error handling (a BaseException), carrying the same payload."""

    def __init__(self, marker: Path) -> None:
        super().__init__(str(marker))
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


REPORT = AttemptReport(started_at=1.0, ended_at=2.5, log_tail="hello\n", log_path="/x/attempt-1.log", progress=0.5,
                       message="half", digests={"out": "abc"})


def test_the_report_travels_as_plain_data_and_comes_back_equal() -> None:
    assert decode_report(encode_report(REPORT)) == REPORT
    assert decode_report(encode_report(AttemptReport())) == AttemptReport()
    error = ErrorInfo("ValueError", "bad", "tb")
    outcomes = [(REPORT, None), (AttemptReport(), error)]
    assert decode_outcomes(encode_outcomes(outcomes), 2) == outcomes
    assert decode_chain_items(encode_chain_items([("a", 1, (REPORT, None))])) == [("a", 1, (REPORT, None))]
    assert outcome(encode_report(REPORT)) == (REPORT, None)


@pytest.mark.parametrize("payload", [
    lambda m: pickle.dumps(REPORT),  # the old encoding: a pickle is refused unopened, whatever it holds
    lambda m: pickle.dumps(Evil(m)),
    lambda m: msgpack.packb([1.0, 2.0, "tail", None, None, "msg"]),  # a field short
    lambda m: msgpack.packb([1.0, 2.0, b"tail", None, None, "msg", None]),  # bytes for a string
    lambda m: msgpack.packb([True, 2.0, "tail", None, None, "msg", None]),  # a bool is not a time
    lambda m: msgpack.packb([1.0, 2.0, "tail", None, None, "msg", {"out": 1}]),  # a digest that is not a string
    lambda m: msgpack.packb({"started_at": 1.0}),
    lambda m: b"\x00garbage",
])
def test_a_report_that_is_not_the_plain_shape_fails_the_attempt_as_unsafe_payload(tmp_path: Path, payload: Any
                                                                                   ) -> None:
    marker = tmp_path / "marker"
    data = payload(marker)
    with pytest.raises(ReportInvalid):
        decode_report(data)
    report, error = outcome(data)
    assert error is not None and error.type == UNSAFE_PAYLOAD and report == AttemptReport()
    assert [e.type for _, e in chain_outcomes(data, 2)] == [UNSAFE_PAYLOAD, UNSAFE_PAYLOAD]  # type: ignore[union-attr]
    with pytest.raises(ReportInvalid):
        decode_chain_items(data)
    assert not marker.exists()


def test_what_the_worker_returns_instead_of_report_bytes_is_refused() -> None:
    for result in ({"started_at": 1.0}, REPORT, 42):
        _, error = outcome(result)
        assert error is not None and error.type == UNSAFE_PAYLOAD, result


def test_the_restricted_unpickler_builds_fabrics_plain_records_and_ray_errors() -> None:
    import ray.exceptions

    failure = NodeFailure("n", 2, ErrorInfo("ValueError", "bad"), REPORT)
    values = [
        {"a": [1, 2.5, "x", b"y", None, True], "s": {1, 2}, "f": frozenset({"z"}), "t": (1,)},
        REPORT, ErrorInfo("T", "m"), TeamGrants(secrets_scopes=("lake-*",)), Request("s/w", "team", gpu=1),
        ErrorCode.FORBIDDEN, KeyError("k"), ray.exceptions.TaskCancelledError(),
        FabricError("no", code=ErrorCode.FORBIDDEN, where="here", fix="that"),
    ]
    for value in values:
        assert safe_loads(pickle.dumps(value, protocol=5)) == value or type(value).__name__.endswith("Error")
    back = safe_loads(pickle.dumps(failure, protocol=5))
    assert (back.node_id, back.attempt, back.error, back.report) == ("n", 2, failure.error, REPORT)
    error = safe_loads(pickle.dumps(FabricError("no", code=ErrorCode.FORBIDDEN, where="here")))
    assert (error.code, error.where) == (ErrorCode.FORBIDDEN, "here")
    task_error = ray.exceptions.RayTaskError("run_pickled_node", "Traceback ...", failure)
    assert safe_loads(pickle.dumps(task_error)).cause.report == REPORT  # a node's failure reaches the engine


def _global(module: str, name: str) -> bytes:
    """A protocol-4 pickle that calls `module.name()` (STACK_GLOBAL, as a hand-made payload would)."""
    def text(s: str) -> bytes:
        raw = s.encode()
        return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE

    return b"\x80\x04" + text(module) + text(name) + b"\x93" + b")R."  # STACK_GLOBAL EMPTY_TUPLE REDUCE STOP


@pytest.mark.parametrize(("module", "name"), [
    ("builtins", "exec"), ("builtins", "eval"), ("builtins", "getattr"), ("os", "system"), ("posix", "system"),
    ("subprocess", "run"), ("fabric.execute.outputs", "remove_tree"),  # a fabric function is not a record
    ("fabric.execute.worker", "os.system"),  # a dotted name walks out of the module
    ("fabric.execute.outputs", "pickle"), ("fabric.capability", "load_or_create_key"),
    ("ray.exceptions", "pickle"), ("ray._private.worker", "global_worker"), ("numpy", "ndarray"),
    ("tests.unit.test_untrusted", "Evil"),  # a class of tenant code
])
def test_the_restricted_unpickler_refuses_every_callable_and_unknown_class(module: str, name: str) -> None:
    with pytest.raises(UnsafePayload) as caught:
        safe_loads(_global(module, name))
    assert f"{module}.{name}" in str(caught.value) and UNSAFE_PAYLOAD in str(caught.value)


def test_a_malicious_reduce_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    for payload in (Evil(marker), [1, {"x": Evil(marker)}], EvilError(marker)):
        with pytest.raises(UnsafePayload):
            safe_loads(pickle.dumps(payload, protocol=5))
    assert not marker.exists()
    pickle.loads(pickle.dumps(Evil(marker)))  # what a plain unpickler would have done
    assert marker.read_text() == "pwned"


@pytest.fixture
def hardened(monkeypatch: pytest.MonkeyPatch) -> None:
    """`harden()` in this test only: Ray's unpickler is put back afterwards."""
    import ray.cloudpickle

    monkeypatch.setattr(ray.cloudpickle, "loads", ray.cloudpickle.loads)
    monkeypatch.setattr(untrusted, "_hardened", False)
    untrusted.harden()


def test_a_hardened_process_opens_a_tenants_error_as_a_refusal_and_runs_nothing(tmp_path: Path, hardened: None
                                                                               ) -> None:
    """What Ray does with a task's stored error in the registry (ray.exceptions.RayError.from_bytes)."""
    import ray.cloudpickle
    import ray.exceptions

    marker = tmp_path / "marker"
    stored = ray.exceptions.RayTaskError("node", "Traceback: EvilError", EvilError(marker)).to_bytes()
    opened = ray.exceptions.RayError.from_bytes(stored)
    assert isinstance(opened, ray.exceptions.UnserializableException) and not marker.exists()
    _, error = outcome(opened)
    assert error is not None and error.type == UNSAFE_PAYLOAD and "EvilError" in error.message
    assert ray.cloudpickle.loads is safe_loads
    failure = NodeFailure("n", 1, ErrorInfo("ValueError", "bad"), REPORT)
    opened = ray.exceptions.RayError.from_bytes(ray.exceptions.RayTaskError("node", "tb", failure).to_bytes())
    assert outcome(opened) == (REPORT, ErrorInfo("ValueError", "bad"))  # a node's own failure still reads


def test_a_refused_result_is_an_unsafe_payload_failure() -> None:
    import ray.exceptions

    refused = ray.exceptions.RaySystemError(UnsafePayload("os.system"), "traceback")
    _, error = outcome(refused)
    assert error is not None and error.type == UNSAFE_PAYLOAD and "os.system" in error.message


def test_a_sealed_actor_hardens_its_process_before_its_own_init(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    import ray.cloudpickle

    from fabric.execute.sealed import sealed

    monkeypatch.setattr(ray.cloudpickle, "loads", ray.cloudpickle.loads)
    monkeypatch.setattr(untrusted, "_hardened", False)
    seen: list[Any] = []

    class Face:
        def __init__(self, home: str) -> None:
            seen.append(ray.cloudpickle.loads)

    wrapped = sealed(Face)
    assert list(inspect.signature(wrapped.__init__).parameters) == ["self", "home"]  # Ray binds against it
    wrapped("/tmp")
    assert seen == [safe_loads]


def test_persisted_outputs_are_read_on_the_head_unopened_and_opened_elsewhere(tmp_path: Path) -> None:
    import pyarrow as pa

    from fabric.execute.outputs import decode_outputs, load_outputs, persist_outputs, read_output_files

    marker = tmp_path / "marker"
    table = pa.table({"x": [1, 2]})
    persist_outputs(str(tmp_path), "s", "n", {"t": table, "v": Evil(marker)})
    files = read_output_files(str(tmp_path), "s", "n", ["t", "v"])
    assert not marker.exists()  # the head's half reads bytes and builds nothing
    assert isinstance(files[0], bytes) and set(files[1]) == {"t"}
    got, _ = decode_outputs(files, ["t", "v"])  # the worker's half (off the head) unpickles the node's values
    assert got.equals(table) and marker.exists()
    assert load_outputs(str(tmp_path), "s", "n", ["t"]).equals(table)


def test_the_registry_reads_notebook_code_as_bytes_only(tmp_path: Path) -> None:
    from fabric.execute.outputs import load_code, save_code

    save_code(str(tmp_path), "s", {"__main__:f": b"blob"})
    assert load_code(str(tmp_path), "s") == {"__main__:f": b"blob"}
    marker = tmp_path / "marker"
    (tmp_path / "s" / "code.pkl").write_bytes(pickle.dumps({"__main__:f": Evil(marker)}))
    with pytest.raises(UnsafePayload):
        load_code(str(tmp_path), "s")
    assert not marker.exists() and os.listdir(tmp_path / "s") == ["code.pkl"]
