"""`fb.connect()`: the HTTP client for an `http(s)://` address (no Ray imported), else the Ray client."""

from __future__ import annotations

from typing import Any

from fabric.protocol import Client
from fabric.retry import REGISTRY_RESTART_WAIT_S
from fabric.settings import settings


def connect(address: str | None = None, *, token: str | None = None, team: str | None = None,
            retry_for: float = REGISTRY_RESTART_WAIT_S, **ray_kwargs: Any) -> Client:
    """A `Client`, the same methods either way.

    `"http://host:8000"` (with `token=`, default $FABRIC_TOKEN) goes through the gateway: no Ray on this
    side, the team from the token. Otherwise Ray: `address=None` joins a running local cluster or starts
    one, `"local"` always starts a fresh one, `"auto"` or `"host:port"` joins an existing cluster; the
    other keywords (`num_cpus`, `num_gpus`, `resources`, `home`, `runtime_env`, ray.init's) go to
    `fabric.client.connect`.

    `retry_for`: how long a call rides out a restarting registry or gateway before it raises."""
    if address is not None and address.startswith(("http://", "https://")):
        from fabric.remote import HttpClient

        if team is not None or ray_kwargs:
            raise TypeError(f"over HTTP the team comes from the token; {sorted(ray_kwargs) or ['team']} "
                            "apply to a Ray connection only")
        return HttpClient(address, token or settings().token, retry_for=retry_for)
    from fabric import client

    return client.connect(address, team=team, token=token, retry_for=retry_for, **ray_kwargs)
