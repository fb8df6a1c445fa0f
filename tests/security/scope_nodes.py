"""Node functions for the scope attack tests (`tests.security.scope_nodes:...`): what a node saw, as artifacts."""

from __future__ import annotations

import hashlib
import json
import time

from fabric.context import context


def made_by(x: int, seconds: float = 0.0) -> dict:
    """A cache node: its artifact says which submission computed it (a reused one says whose it reused)."""
    time.sleep(seconds)
    ctx = context()
    (ctx.artifact_dir / "made_by.txt").write_text(ctx.submission_id)
    return {"x": x, "by": ctx.submission_id}


def secret_digest(scope: str, key: str) -> str:
    """Reads a secret and leaves its digest (never the value), and which scopes the head delivered."""
    ctx = context()
    value = ctx.secret(key, scope=scope)
    digest = hashlib.sha256(value.encode()).hexdigest()
    (ctx.artifact_dir / "secret.json").write_text(json.dumps({"sha256": digest,
                                                              "delivered": sorted(ctx.secret_values)}))
    return digest
