"""fabric's Python logging (the registry, the gateway, the CLI): left as it is by default, or, with
FABRIC_LOG_FORMAT=json (`Settings.log_format`), one JSON object per line (ts, level, logger, msg,
submission_id/node_id when present)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

LOGGERS = ("fabric", "serve", "jobs")  # fabric's own loggers: never Ray's, never the application's root logger
CONTEXT = ("submission_id", "node_id")  # passed with `extra=` by the code that knows them


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback goes into `exc`, escaped, not onto more lines)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for key in CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(log_format: str, stream: IO[str] | None = None,
                      level: int = logging.INFO) -> logging.Handler | None:
    """With `json` (FABRIC_LOG_FORMAT, read by fabric.settings), fabric's loggers write JSON lines to `stream`
    (stderr) and no longer pass their records on to the root logger (no line twice). Idempotent: a second
    call replaces the handler. With `text` (the default) nothing changes. Returns the handler installed."""
    if log_format != "json":
        return None
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.set_name("fabric-json")
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "fabric-json"]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return handler


__all__ = ["JsonFormatter", "configure_logging"]
