"""The gateway's front door, an ASGI middleware that runs before FastAPI reads anything: who is calling
(401 before a byte of the body is read), how often (a token bucket per team: 429 with Retry-After), how
many query parameters, and how many body bytes, counted as they stream, chunked bodies included (413).

Every answer it gives is the gateway's problem+json. The state is per replica process: the tokens file
(re-read when it changes) and the buckets; the Gateway replica configures it when it starts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fabric.errors import ErrorCode, FabricError
from serve.auth import Principal, TokenTable
from serve.openapi import problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
log = logging.getLogger("fabric.gateway")

MAX_BODY_BYTES = 1 << 20
# Query parameters per request: every route takes a handful; 1,000 label filters must not reach the store.
MAX_QUERY_PARAMS = 32
_WRITES = ("POST", "PUT", "PATCH", "DELETE")
PASS_ON = object()  # `_unauthenticated`'s answer where another layer answers (serve/proxy_guard.py): no check here


@dataclass(frozen=True)
class Limits:
    """Per team, per gateway replica: `rate` requests per second to /api, of which `write_rate` may change
    something (a POST under /api/orch: submit, cancel, runs...); a bucket holds `burst_s` seconds of its rate;
    at most `team_writes` of a team's writes are in flight at once. A limit of 0 turns it off."""

    rate: float = 50.0
    write_rate: float = 10.0
    burst_s: float = 3.0
    team_writes: int = 2  # a team's writes in flight at once (0: no limit)
    max_body_bytes: int = MAX_BODY_BYTES
    max_query_params: int = MAX_QUERY_PARAMS


class TokenBuckets:
    """One token bucket per key (a team): `take` spends a token, or says how long until there is one."""

    def __init__(self, rate: float, burst_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * burst_s)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._lock = threading.Lock()  # the routes Serve runs in threads share the replica with the event loop

    def take(self, key: str) -> float:
        """0.0 when allowed (a token is spent), else the seconds until the next token."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


class InFlight:
    """How many requests each key (a team) has in flight: `enter` admits one unless the key is at `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: Counter[str] = Counter()

    def enter(self, key: str) -> bool:
        """True when admitted (then `leave` once it is answered); False when `key` has `limit` in flight."""
        if self.limit > 0 and self._counts[key] >= self.limit:
            return False
        self._counts[key] += 1
        return True

    def leave(self, key: str) -> None:
        self._counts[key] -= 1
        if self._counts[key] <= 0:
            del self._counts[key]

    def counts(self) -> dict[str, int]:
        return dict(self._counts)


class Tokens:
    """The tokens file as a TokenTable, re-read only when its mtime changes (`fabric token` takes effect
    without a restart)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._cached: tuple[float, TokenTable] | None = None

    def table(self) -> TokenTable:
        """A file that no longer parses refuses every request (503 SETTINGS_INVALID) until it is fixed."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = 0.0
        if self._cached is None or self._cached[0] != mtime:
            try:
                table = TokenTable.load(self.path)
            except (FabricError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
                self._cached = None
                # The details (team names, fields) go to the gateway's log, not to whoever asked.
                log.error("the tokens file %s is invalid: %s", self.path, exc)
                raise FabricError("the gateway's tokens file is invalid", code=ErrorCode.SETTINGS_INVALID,
                                  where="tokens file", fix="an admin fixes it; the gateway's log names the field "
                                  "(`fabric token` and docs/security.md show the format)") from None
            self._cached = (mtime, table)
        return self._cached[1]


class GuardState:
    """What the middleware checks against, set by the Gateway replica when it starts (`configure`)."""

    def __init__(self) -> None:
        self.tokens: Tokens | None = None
        self.limits = Limits()
        self.requests = TokenBuckets(self.limits.rate, self.limits.burst_s)
        self.writes = TokenBuckets(self.limits.write_rate, self.limits.burst_s)
        self.in_flight = InFlight(self.limits.team_writes)

    def configure(self, tokens: Tokens, limits: Limits) -> None:
        self.tokens, self.limits = tokens, limits
        self.requests = TokenBuckets(limits.rate, limits.burst_s)
        self.writes = TokenBuckets(limits.write_rate, limits.burst_s)
        self.in_flight = InFlight(limits.team_writes)


def _rejected(status: int, message: str, code: ErrorCode, where: str, fix: str,
              headers: dict[str, str] | None = None) -> Any:
    response = problem(status, FabricError(message, code=code, where=where, fix=fix))
    response.headers.update(headers or {})
    return response


class Guard:
    """The middleware (`api.add_middleware(Guard, state=...)`). Routes outside /api (health, metrics, the
    UI's files, the OpenAPI document) need no token but get the same query and body bounds."""

    refused_by = "gateway"  # the X-Fabric-Refused-By header of its refusals (serve/proxy_guard.py: "proxy")

    def __init__(self, app: App, state: GuardState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        writer, rejected = self._check_request(scope)
        if rejected is PASS_ON:
            await self.app(scope, receive, send)
            return
        if rejected is None and writer is not None and not self.state.in_flight.enter(writer):
            rejected, writer = _busy(writer, self.state.limits.team_writes), None
        body: list[Message] = []
        try:
            if rejected is None:
                body, rejected = await self._read_body(scope, receive)
            if rejected is not None:
                rejected.headers["X-Fabric-Refused-By"] = self.refused_by
                self._refused(scope, rejected)
                await rejected(scope, receive, send)
                return
            await self.app(scope, _replay(body, receive), send)
        finally:
            if writer is not None:
                self.state.in_flight.leave(writer)

    def _refused(self, scope: Scope, rejected: Any) -> None:
        """What is about to be refused. In a replica, nothing more: its metrics middleware counts the refusals with
        every other answer, and it holds nothing back (a held request would take one of its few request slots).
        The proxy's guard counts them and remembers a 429's Retry-After per connection."""

    def _unauthenticated(self, error: FabricError) -> Any:
        """The answer to a token that is missing or not in the file (or to a file that does not parse)."""
        return problem(503 if error.code == ErrorCode.SETTINGS_INVALID else 401, error)

    def _check_request(self, scope: Scope) -> tuple[str | None, Any]:
        """Who, how often, how many query parameters: all from the request line and headers. With no answer
        yet, the team of a write (its in-flight count is the caller's to take)."""
        writer = None
        if scope["path"].startswith(("/api/", "/v1/")):  # /v1/: the OpenAI-compatible routes
            try:
                principal = self._authenticate(scope)
            except FabricError as error:
                return None, self._unauthenticated(error)
            write = scope["method"] in _WRITES and scope["path"].startswith("/api/orch/")
            waited = self._spend(principal, write)
            if waited is not None:
                return None, waited
            writer = principal.team if write else None
        return writer, self._check_query(scope)

    def _authenticate(self, scope: Scope) -> Principal:
        if self.state.tokens is None:
            raise FabricError("the gateway has no tokens file yet", code=ErrorCode.UNAUTHORIZED,
                              where="Authorization", fix="retry once the gateway has started")
        authorization = next((value.decode("latin-1") for name, value in scope["headers"]
                              if name == b"authorization"), None)
        return self.state.tokens.table().authenticate(authorization)

    def _spend(self, principal: Principal, write: bool) -> Any:
        wait = self.state.requests.take(principal.team)
        which, rate = "requests", self.state.limits.rate
        if not wait and write:
            wait = self.state.writes.take(principal.team)
            which, rate = "writes", self.state.limits.write_rate
        if not wait:
            return None
        retry_after = max(1, math.ceil(wait))
        variable = "FABRIC_GATEWAY_RATE" if which == "requests" else "FABRIC_GATEWAY_WRITE_RATE"
        return _rejected(429, f"team {principal.team!r} is over its rate of {rate:g} {which} per second",
                         ErrorCode.RATE_LIMITED, "Authorization",
                         f"retry after {retry_after} s (Retry-After); the gateway's operator sets the rate "
                         f"with {variable}", {"Retry-After": str(retry_after)})

    def _check_query(self, scope: Scope) -> Any:
        query = scope.get("query_string", b"")
        if not query:
            return None
        names = [name for name, _ in urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True,
                                                             max_num_fields=None)]
        if len(names) <= self.state.limits.max_query_params:
            return None
        name, count = Counter(names).most_common(1)[0]
        return _rejected(422, f"the request has {len(names)} query parameters ({count} of them {name!r}), "
                              f"more than {self.state.limits.max_query_params}",
                         ErrorCode.SPEC_FIELD, name[:100],
                         f"send at most {self.state.limits.max_query_params} query parameters")

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[list[Message], Any]:
        """The body's messages, counted as they arrive; a 413 as soon as it passes the limit."""
        limit = self.state.limits.max_body_bytes
        length = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > limit:
            return [], _too_large(f"the body is {int(length)} bytes", limit)
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, None
            size += len(message.get("body", b""))
            if size > limit:
                return [], _too_large(f"the body passed {limit} bytes as it arrived", limit)
            if not message.get("more_body", False):
                return messages, None


def _busy(team: str, limit: int) -> Any:
    """A team at its writes in flight: the others' requests go on; this one is tried again in a second."""
    return _rejected(429, f"team {team!r} already has {limit} writes in flight on this gateway replica",
                     ErrorCode.RATE_LIMITED, "Authorization",
                     "retry after 1 s (Retry-After), or wait for your earlier requests' answers; the gateway's "
                     "operator sets the limit with FABRIC_GATEWAY_TEAM_WRITES", {"Retry-After": "1"})


def _too_large(what: str, limit: int) -> Any:
    return _rejected(413, f"{what}, over the {limit}-byte limit", ErrorCode.TOO_LARGE, "body",
                     "send a smaller DAG, or split it into several submissions")


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives the app the body already read, then whatever comes next (a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
