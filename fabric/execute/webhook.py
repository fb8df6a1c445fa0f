"""One webhook POST: resolve the host, refuse the head's own network (SSRF), connect to the checked address.

The connection goes to the very address that was checked (the host is not resolved a second time, so a DNS
answer that changes between the check and the connect cannot reach a refused address), redirects are not
followed, and the answer's body is not read beyond a small limit.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from fabric.spec.notify import address_problem

TIMEOUT_S = 10.0


class Refused(Exception):
    """The URL may not be called: it resolves to an address the head keeps webhooks away from."""


def resolve(host: str, port: int, allow_private: bool) -> str:
    """The address to connect to; Refused when any address of the host is refused (all must be allowed)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host!r}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        problem = address_problem(address, allow_private)
        if problem is not None:
            raise Refused(f"{host} resolves to {problem}; an operator may allow it with "
                          "FABRIC_WEBHOOK_ALLOW_PRIVATE=1")
    return addresses[0]


def post(url: str, body: bytes, headers: dict[str, str], allow_private: bool, timeout: float = TIMEOUT_S) -> int:
    """POST `body`; the HTTP status. Raises Refused, or OSError/HTTPException on a network failure."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve(host, port, allow_private)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def pinned(_address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        return socket.create_connection((address, port), *args, **kwargs)

    conn._create_connection = pinned  # type: ignore[attr-defined]  # TLS still checks the certificate for `host`
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                       "User-Agent": "fabric-webhook/1", **headers})
        response = conn.getresponse()
        response.read(64 << 10)
        return response.status
    finally:
        conn.close()
