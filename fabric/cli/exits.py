"""The CLI's exit codes, and `fail()`: every error is printed with where and fix, then exits with its code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import NoReturn

import typer

from fabric.errors import ErrorCode, FabricError, SpecError


class ExitCode(IntEnum):
    """What `fabric ...` exits with; scripts may rely on these numbers (docs/cli.md lists them)."""

    OK = 0
    FAILED = 1  # the work ran and did not succeed (a DAG FAILED, a RayJob failed, a doctor check FAILed)
    BAD_INPUT = 2  # the spec, the params or a flag is wrong: nothing was submitted
    ERROR = 3  # fabric refused or could not do it: not found, conflict, timeout, admission closed, ...
    UNREACHABLE = 4  # no Ray, gateway, registry or Kubernetes API answered
    DENIED = 5  # the token is missing, wrong, or may not do this
    INTERRUPTED = 130  # Ctrl-C


_BAD_INPUT = {ErrorCode.KIND_NOT_RUNNABLE, ErrorCode.KIND_PARAMS, ErrorCode.RESOURCES_INFEASIBLE,
              ErrorCode.RUNTIME_PARAMS, ErrorCode.TOO_LARGE}
_UNREACHABLE = {ErrorCode.GATEWAY_UNREACHABLE, ErrorCode.RAY_UNREACHABLE, ErrorCode.REGISTRY_UNAVAILABLE,
                ErrorCode.STORE_UNAVAILABLE}
_DENIED = {ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.POLICY_DENIED}


def exit_code_for(error: FabricError) -> ExitCode:
    """The exit code that a FabricError maps to (by its class, then by its code)."""
    code = str(error.code)
    if isinstance(error, SpecError) or code.startswith("SPEC_") or error.code in _BAD_INPUT:
        return ExitCode.BAD_INPUT
    if error.code in _UNREACHABLE:
        return ExitCode.UNREACHABLE
    if error.code in _DENIED:
        return ExitCode.DENIED
    return ExitCode.ERROR


def unreachable(exc: BaseException, where: str = "--address") -> FabricError:
    """A connection error from Ray or the network, as a FabricError with the fix."""
    return FabricError(f"cannot reach the fabric: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}",
                       code=ErrorCode.RAY_UNREACHABLE, where=where,
                       fix="start one (`fabric up`, or `ray start --head`), pass --address / FABRIC_ADDRESS, "
                           "or run `fabric doctor` to see what is wrong")


def fail(error: FabricError) -> NoReturn:
    """Print the error (code, where, every problem with its fix) on stderr and exit with its code."""
    from fabric.cli.console import err, error_text

    err.print(error_text(error))
    raise typer.Exit(int(exit_code_for(error)))


@contextmanager
def failing(where: str = "--address") -> Iterator[None]:
    """Turn a FabricError or a connection error in the block into `fail()`: a message and an exit code,
    never a traceback."""
    try:
        yield
    except FabricError as exc:
        fail(exc)
    except (ConnectionError, TimeoutError) as exc:  # Ray's "Could not find any running Ray instance", sockets
        fail(unreachable(exc, where))
