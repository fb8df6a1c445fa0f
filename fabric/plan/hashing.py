"""Content hashes: a stable digest of what a node computes, chained through its inputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def node_content_hash(*, kind: str, params: Mapping[str, Any], entrypoint: str | None,
                      env: Mapping[str, str], image: str | None, outs: tuple[str, ...],
                      inputs: Mapping[str, str]) -> str:
    """`inputs` maps each input name to the content hash of the node producing it (and which out).

    Only params and env need canonical JSON; the rest is joined directly, which keeps hashing a
    1,000-input node cheap."""
    parts = [kind, entrypoint or "", image or "", ",".join(outs),
             canonical_json(params) if params else "{}", canonical_json(env) if env else "{}",
             ";".join(f"{name}={source}" for name, source in sorted(inputs.items()))]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
