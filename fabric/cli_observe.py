"""`fabric graph` (the DAG in the terminal, or as SVG/PNG), `fabric lineage`, and following a node's log."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fabric.console import error_text
from fabric.errors import ErrorCode, FabricError, SpecError
from fabric.states import TERMINAL_NODE_STATES

out = Console()
err = Console(stderr=True)
EXIT_FAILED, EXIT_INVALID, EXIT_ERROR = 1, 2, 3  # as fabric/cli.py, which imports this module

AddressOpt = Annotated[str | None, typer.Option(
    "--address", envvar="FABRIC_ADDRESS",
    help="Ray address (default: RAY_ADDRESS or auto), or the gateway's http(s):// URL with FABRIC_TOKEN set")]


def _fail(error: FabricError) -> None:
    err.print(error_text(error))
    raise typer.Exit(EXIT_INVALID if isinstance(error, SpecError) else EXIT_ERROR)


def _submission(address: str | None, submission_id: str) -> Any:
    import fabric.client as client

    return client.connect(address or "auto").get(submission_id)


def graph(submission_id: str, address: AddressOpt = None,
          out_file: Annotated[Path | None, typer.Option(
              "--out", "-o", help="also write the picture: .svg (always) or .png (needs matplotlib)")] = None) -> None:
    """Draw a submission's DAG: a table in the terminal (layers, states, waits, run times, critical path)."""
    from fabric import graph_view

    try:
        submission = _submission(address, submission_id)
        shape, status = submission.graph(), submission.status().to_dict()
        out.print(graph_view.table(shape, status))
        if out_file is not None:
            suffix = out_file.suffix.lower()
            if suffix == ".svg":
                out_file.write_text(graph_view.svg(shape, status))
            elif suffix == ".png":
                try:
                    graph_view.png(shape, status, str(out_file))
                except ImportError as exc:
                    raise FabricError("PNG output needs matplotlib", code=ErrorCode.SPEC_FIELD, where="--out",
                                      fix="pip install matplotlib, or write an .svg") from exc
            else:
                raise FabricError(f"cannot write {suffix or 'a file without a suffix'}", code=ErrorCode.SPEC_FIELD,
                                  where="--out", fix="name the file .svg or .png")
            err.print(f"[dim]wrote {out_file}[/]")
    except FabricError as exc:
        _fail(exc)


def lineage(submission_id: str, address: AddressOpt = None) -> None:
    """Print a submission's OpenLineage RunEvents as JSON lines (what the lineage file and Marquez receive)."""
    try:
        for event in _submission(address, submission_id).lineage():
            sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
    except FabricError as exc:
        _fail(exc)


def follow_logs(submission: Any, node: str, poll_s: float = 0.5, timeout: float | None = None) -> str:
    """Print the node's log as it grows (each attempt's output arrives when the attempt ends) and its state
    and progress meanwhile; return the node's final state."""
    shown, last_note = 0, ""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = submission.status()
        state = status.node(node)
        text = submission.logs(node)
        if len(text) > shown:
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
        note = f"{state.state}" + (f" {state.progress:.0%} {state.message}" if state.state == "RUNNING" else "")
        if note != last_note:
            err.print(f"[dim]# {node}: {note.strip()}[/]")
            last_note = note
        if state.state in TERMINAL_NODE_STATES or status.done:
            return str(state.state)
        if deadline is not None and time.monotonic() > deadline:
            return str(state.state)
        time.sleep(poll_s)


def register(app: typer.Typer) -> None:
    app.command()(graph)
    app.command()(lineage)
