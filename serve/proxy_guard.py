"""The gateway's guard in Ray Serve's HTTP proxy: a team over its rate or its writes in flight, too many query
parameters or too large a body on /api or /v1 is refused by the proxy itself, before the request is routed to a
gateway replica, so a flood of refusals costs the proxy's event loop only.

Ray Serve calls `middlewares()` in each proxy process it starts when RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH
names it: `fb.connect()` sets that for a local Ray it starts (`fabric up`), cluster.yaml and k8s/ on the head.
The proxy refuses only what the replica would: a token it does not know passes on, and the replica answers its
401 (so a proxy reading another tokens file than the gateway's can refuse nothing the gateway would accept).
A proxy where the tokens file is not (a worker node's) guards nothing: the replicas, on the head, still do.

A connection that asks again before the Retry-After of its last 429 has passed is held until that time is up,
then judged afresh (a tarpit): a loop that ignores Retry-After then costs the proxy one request per Retry-After per
connection, not one per round trip, and the teams sharing the proxy's event loop keep their latency. Clients that
wait out Retry-After (`fb.connect()`, curl's --retry) never meet it; holding a request costs a timer, not CPU.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware

from fabric.errors import FabricError
from fabric.execute.metrics import RayMetricsSink
from fabric.record.metrics import GATEWAY
from fabric.settings import settings
from serve.guard import PASS_ON, App, Guard, GuardState, Limits, Receive, Scope, Send, Tokens

REFUSED_IN_PROXY = "(refused in Serve's proxy)"  # the route label of what the proxy's guard refused
GATEWAY_PATHS = ("/api/", "/v1/")  # the gateway's routes that take a token; the proxy leaves every other path alone
log = logging.getLogger("fabric.gateway")


MAX_HELD_CONNECTIONS = 4096  # connections whose Retry-After is remembered (the oldest are forgotten first)


class RetryAfters:
    """Until when each connection (its peer address and port) was told to wait: its last 429's Retry-After."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._until: dict[tuple[str, int], float] = {}
        self._clock = clock

    def left(self, key: tuple[str, int]) -> float:
        """How much of its Retry-After the connection has not waited yet (0.0: all of it, or it was told none)."""
        until = self._until.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._until[key]
            return 0.0
        return left

    def told(self, key: tuple[str, int], retry_after_s: float) -> None:
        now = self._clock()
        self._until.pop(key, None)  # re-inserted last: the dict stays in the order connections were last told
        self._until[key] = now + retry_after_s
        while self._until:  # forget, oldest first, what has run out, and what is past the limit
            oldest, until = next(iter(self._until.items()))
            if until > now and len(self._until) <= MAX_HELD_CONNECTIONS:
                break
            del self._until[oldest]


async def hold(seconds: float) -> None:
    await asyncio.sleep(seconds)


class ProxyGuard(Guard):
    refused_by = "proxy"

    def __init__(self, app: App, state: GuardState) -> None:
        super().__init__(app, state)
        self._metrics = RayMetricsSink(GATEWAY)  # the replica never sees these: Ray's agent exports them
        self._retry_afters = RetryAfters()

    def _refused(self, scope: Scope, rejected: Any) -> None:
        retry_after = rejected.headers.get("Retry-After")
        if rejected.status_code == 429 and retry_after and retry_after.isdigit():
            self._retry_afters.told(_peer(scope), float(retry_after))
        try:
            self._metrics("fabric_gateway_requests_total", 1.0,
                          {"route": REFUSED_IN_PROXY, "status": str(rejected.status_code)})
        except Exception:  # noqa: BLE001 - outside a Ray worker, or Ray's metrics failing: the refusal stands
            log.debug("fabric's proxy refusal not counted", exc_info=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GATEWAY_PATHS):
            await self.app(scope, receive, send)
            return
        # Asked again before the Retry-After it was told: the request waits out the rest, then is judged afresh
        # (a client a little too eager is slowed to its rate, never shut out). Only a connection that was told a
        # Retry-After is held; one shared by several clients (a load balancer's) at worst waits that long.
        early = self._retry_afters.left(_peer(scope))
        if early > 0:
            await hold(early)
        await super().__call__(scope, receive, send)

    def _unauthenticated(self, error: FabricError) -> object:
        return PASS_ON  # the replica answers an unknown token: the proxy refuses only what it would too


def _peer(scope: Scope) -> tuple[str, int]:
    host, port = scope.get("client") or ("", 0)
    return host, port


def middlewares() -> list[Middleware]:
    """What Serve's proxy runs before routing: the guard, configured as the gateway's replicas are. Never raises:
    a proxy that failed here would take the gateway down with it."""
    try:
        config = settings()
        tokens = Path(config.tokens)
        if not tokens.is_file():
            log.info("no tokens file at %s: this proxy leaves the guarding to the gateway's replicas", tokens)
            return []
        state = GuardState()
        state.configure(Tokens(tokens), Limits(rate=config.gateway_rate, write_rate=config.gateway_write_rate,
                                               burst_s=config.gateway_burst_s, team_writes=config.gateway_team_writes))
    except Exception:  # noqa: BLE001 - the replicas still guard everything
        log.exception("fabric's guard is not in this proxy: the gateway's replicas guard alone")
        return []
    return [Middleware(ProxyGuard, state=state)]
