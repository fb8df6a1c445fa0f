"""The `fabric` command line: its commands, exit codes, output formats, console and the gateway starter.

`fabric.cli.commands` holds the Typer app; `main()` is the console script (pyproject's `[project.scripts]`).
"""

from __future__ import annotations

from typing import Any


def main() -> None:
    from fabric.cli.commands import app
    from fabric.errors import FabricError
    from fabric.logs import configure_logging
    from fabric.settings import settings

    try:
        log_format = settings().log_format
    except FabricError:  # a bad setting: the command that reads it reports it, with its fix
        log_format = "text"
    configure_logging(log_format)  # FABRIC_LOG_FORMAT=json: fabric's log records as JSON lines (fabric/logs.py)
    app()


def __getattr__(name: str) -> Any:
    # `from fabric.cli import app` for tests and embedding; loaded on use so that importing a helper module
    # (e.g. fabric.cli.gateway) does not build every command.
    if name == "app":
        from fabric.cli.commands import app

        return app
    raise AttributeError(f"module 'fabric.cli' has no attribute {name!r}")
