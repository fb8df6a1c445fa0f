"""Errors with a stable code that say what was wrong, where, and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable error codes: clients and docs may rely on these strings."""

    SPEC_INVALID = "SPEC_INVALID"
    SPEC_FIELD = "SPEC_FIELD"
    SPEC_UNKNOWN_FIELD = "SPEC_UNKNOWN_FIELD"
    SPEC_DUPLICATE_ID = "SPEC_DUPLICATE_ID"
    SPEC_DANGLING_EDGE = "SPEC_DANGLING_EDGE"
    SPEC_CYCLE = "SPEC_CYCLE"
    SPEC_UNWIRED_INPUT = "SPEC_UNWIRED_INPUT"
    SPEC_UNKNOWN_KIND = "SPEC_UNKNOWN_KIND"
    SPEC_QUANTITY = "SPEC_QUANTITY"
    SPEC_PARSE = "SPEC_PARSE"
    SPEC_TOO_LARGE = "SPEC_TOO_LARGE"
    SPEC_CONDITION = "SPEC_CONDITION"  # a `when` that does not parse, or names what is not upstream or a param
    KIND_NOT_RUNNABLE = "KIND_NOT_RUNNABLE"
    KIND_PARAMS = "KIND_PARAMS"
    RESOURCES_INFEASIBLE = "RESOURCES_INFEASIBLE"
    RUNTIME_PARAMS = "RUNTIME_PARAMS"
    PARAM_UNKNOWN = "PARAM_UNKNOWN"
    PARAM_TYPE = "PARAM_TYPE"
    PARAM_REQUIRED = "PARAM_REQUIRED"
    SETTINGS_INVALID = "SETTINGS_INVALID"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    NOT_FOUND = "NOT_FOUND"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    POLICY_DENIED = "POLICY_DENIED"  # the token's role may not submit this (fabric/spec/policy.py)
    TOO_LARGE = "TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"  # gateway: the team is over its request rate (429, Retry-After)
    ADMISSION_CLOSED = "ADMISSION_CLOSED"
    ILLEGAL_TRANSITION = "ILLEGAL_TRANSITION"
    NOT_FINISHED = "NOT_FINISHED"
    NODE_FAILED = "NODE_FAILED"
    NO_CONTEXT = "NO_CONTEXT"
    LOCAL_PATH_OUTPUT = "LOCAL_PATH_OUTPUT"  # a warning in a node log: an output names a worker-local file
    TIMEOUT = "TIMEOUT"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    STORE_LEASED = "STORE_LEASED"
    CONTROL_IMPOSTOR = "CONTROL_IMPOSTOR"  # an actor under a fabric name that cannot prove it holds the key
    UNSAFE_PAYLOAD = "UNSAFE_PAYLOAD"  # a worker sent the control plane bytes it does not open (not plain data)
    GATEWAY_UNREACHABLE = "GATEWAY_UNREACHABLE"
    RAY_UNREACHABLE = "RAY_UNREACHABLE"
    REGISTRY_UNAVAILABLE = "REGISTRY_UNAVAILABLE"
    INTERNAL = "INTERNAL"  # a bug in fabric: answered as problem+json 500, never retried by clients


# An error lists at most this many problems: a 10,000-node spec with an error per node must not answer
# with megabytes of text, nor spend seconds describing problems nobody reads.
MAX_PROBLEMS = 100


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: a code, where it is, what is wrong, how to fix it."""

    code: ErrorCode
    where: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"code": str(self.code), "where": self.where, "message": self.message, "fix": self.fix}

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text} (fix: {self.fix})" if self.fix else text


@dataclass
class FabricError(Exception):
    """Base error of fabric. `problems` lists every issue found when there are several."""

    message: str
    code: ErrorCode = ErrorCode.SPEC_INVALID
    where: str = ""
    fix: str = ""
    problems: tuple[Problem, ...] = field(default=())

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        head = f"[{self.code}] {self.message}"
        if self.where:
            head += f" (at {self.where})"
        if self.fix:
            head += f"\n  fix: {self.fix}"
        return "".join([head, *(f"\n  - [{problem.code}] {problem}" for problem in self.problems)])

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries inside Ray; keep them picklable with all fields.
        return (_rebuild, (type(self), self.message, self.code, self.where, self.fix, self.problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": str(self.code),
            "message": self.message,
            "where": self.where,
            "fix": self.fix,
            "problems": [p.to_dict() for p in self.problems],
        }


def _rebuild(cls: type[FabricError], message: str, code: ErrorCode, where: str, fix: str,
             problems: tuple[Problem, ...]) -> FabricError:
    return cls(message, code=code, where=where, fix=fix, problems=problems)


class SpecError(FabricError):
    """A DAG spec or runtime params that cannot be accepted; `problems` has every reason at once, up to
    MAX_PROBLEMS of them (the message gives the full count)."""

    @classmethod
    def from_problems(cls, problems: list[Problem] | tuple[Problem, ...], what: str = "DAG spec",
                      count: int | None = None) -> SpecError:
        """`count`: how many problems there are in all, when the caller stopped describing them early."""
        count = max(len(problems), count or 0)
        noun = "problem" if count == 1 else "problems"
        verb = "are" if what.endswith("params") else "is"
        listed = f" (the first {MAX_PROBLEMS} are listed)" if count > MAX_PROBLEMS else ""
        return cls(f"{what} {verb} invalid: {count} {noun}{listed}", code=ErrorCode.SPEC_INVALID,
                   problems=tuple(problems[:MAX_PROBLEMS]))


class NotFoundError(FabricError):
    """A submission, node or output that does not exist."""


class ConflictError(FabricError):
    """A request that contradicts existing state, e.g. an idempotency key reused with another spec."""


class IllegalTransition(FabricError):
    """A state change that the transition table does not allow: always a bug in fabric."""


class NodeFailedError(FabricError):
    """Raised by `Submission.result` when the node did not succeed."""
