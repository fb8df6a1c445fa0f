"""The `notify:` section (a pipeline's, or a submission's in runtime_params): webhooks and the events they want."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from fabric.errors import ErrorCode, Problem
from fabric.spec.quantities import Duration

MAX_URL = 2048
_SECRET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class NotifyEvent(StrEnum):
    """What a webhook may ask to hear about."""

    SUCCESS = "success"  # the run SUCCEEDED
    FAILURE = "failure"  # the run ended FAILED, TIMED_OUT or CANCELLED
    NODE_FAILURE = "node_failure"  # a node ended FAILED or TIMED_OUT (its retries spent)
    SLA_MISS = "sla_miss"  # slo.deadline passed while running, or a max_runtime (the DAG's or a node's) ran out
    QUEUE_WAIT = "queue_wait"  # a ready node waited longer than notify.queue_wait to be released


def _fail(message: str, fix: str) -> PydanticCustomError:
    return PydanticCustomError("spec_value", message, {"fix": fix})


def check_url(url: str) -> str:
    """Syntax only (http/https, a host, no credentials); where it resolves to is checked at each delivery."""
    if len(url) > MAX_URL:
        raise _fail(f"the webhook URL is longer than {MAX_URL} characters", "use a shorter URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise _fail(f"{url[:200]!r} is not a valid URL: {exc}", "use a URL like 'https://hooks.example.com/x'") \
            from None
    if parts.scheme not in ("http", "https"):
        raise _fail(f"a webhook URL must be http or https, not {parts.scheme or 'schemeless'!r}",
                    "use a URL like 'https://hooks.example.com/fabric'")
    if not parts.hostname:
        raise _fail(f"{url[:200]!r} has no host", "use a URL like 'https://hooks.example.com/fabric'")
    if parts.username is not None or parts.password is not None:
        # Credentials in a URL end up in logs and the audit: the body is signed instead.
        raise _fail("a webhook URL must not carry credentials (user:password@)",
                    "drop them: the receiver checks the X-Fabric-Signature header instead")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise _fail("a webhook URL must not contain whitespace or control characters", "percent-encode them")
    return url


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why a webhook may not be sent to this IP address (None: it may). Loopback, link-local (the cloud
    metadata service), private, multicast and reserved addresses reach the head's own network: refused unless
    the operator opted in (FABRIC_WEBHOOK_ALLOW_PRIVATE=1)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return f"{ip} is not a unicast address"
    if allow_private:
        return None
    for what, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                       ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return f"{ip} is a {what} address (the head's own network)"
    return None


class Webhook(BaseModel):
    """One receiver: where, which events, and the head secret that signs the body."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    url: str = Field(min_length=1, description="http(s) URL that gets a signed JSON POST per event.")
    secret: str = Field(description="'<scope>/<key>' of a head secret (FABRIC_SECRETS_DIR) that signs the body; "
                                    "through the gateway, a scope granted to the team.")
    events: list[NotifyEvent] = Field(default_factory=lambda: [NotifyEvent.SUCCESS, NotifyEvent.FAILURE],
                                  min_length=1, description="The events sent to this webhook.")
    max_attempts: int = Field(5, ge=1, le=20, description="Delivery attempts, with backoff, before giving up.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        if not _SECRET.match(value) or ".." in value.split("/"):
            raise _fail(f"{value[:200]!r} is not a secret reference: write '<scope>/<key>' of a head secret",
                        "put the key in $FABRIC_SECRETS_DIR/<scope>/<key> on the head and write 'scope/key' "
                        "here; a secret's value never goes in the spec")
        return value

    @property
    def scope(self) -> str:
        return self.secret.rsplit("/", 1)[0]

    @property
    def key(self) -> str:
        return self.secret.rsplit("/", 1)[1]


class NotifySpec(BaseModel):
    """`notify:` of a pipeline or of one submission (runtime_params.notify): both apply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    webhooks: list[Webhook] = Field(default_factory=list, max_length=10)
    queue_wait: Duration | None = Field(None, description="A ready node waiting longer than this to be released "
                                                          "sends queue_wait (once per run).")

    @field_validator("queue_wait")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise _fail("queue_wait must be positive", "use a duration like '10m'")
        return value


def node_deadline_problems(raw: Mapping[str, Any]) -> list[Problem]:
    """slo.deadline is the run's: a node that sets one is told so (on the raw spec, malformed nodes tolerated)."""
    nodes = raw.get("nodes")
    return [Problem(ErrorCode.SPEC_FIELD, f"nodes[{i}].slo.deadline", "slo.deadline is the DAG's, not a node's",
                    "set it in the DAG's slo; a node's own time limit is its slo.max_runtime")
            for i, node in enumerate(nodes if isinstance(nodes, list) else [])
            if isinstance(node, Mapping) and isinstance(node.get("slo"), Mapping)
            and node["slo"].get("deadline") is not None]
