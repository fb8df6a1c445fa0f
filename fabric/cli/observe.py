"""`fabric graph` (the DAG in the terminal, as data, or as SVG/PNG), `fabric lineage`, and following a node's log."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fabric.cli.common import AddressOpt, connect
from fabric.cli.console import err
from fabric.cli.exits import failing
from fabric.cli.output import Output, emit
from fabric.errors import ErrorCode, FabricError
from fabric.states import TERMINAL_NODE_STATES

FORMATS = {o.value for o in Output}


def _submission(address: str | None, submission_id: str) -> Any:
    return connect(address).get(submission_id)


def _write_picture(out_file: Path, shape: dict[str, Any], status: dict[str, Any]) -> None:
    from fabric.cli import graph_view

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


def graph(submission_id: str, address: AddressOpt = None,
          out_file: Annotated[Path | None, typer.Option(
              "--out", help="also write the picture: .svg (always) or .png (needs matplotlib)")] = None,
          output: Annotated[str, typer.Option(
              "--output", "-o", help="table, json or yaml (the graph and the status); a name ending in .svg or "
                                     ".png is taken as --out, as in earlier versions")] = "table") -> None:
    """Draw a submission's DAG: a table in the terminal (layers, states, waits, run times, critical path)."""
    from fabric.cli import graph_view

    with failing():
        if output.lower() not in FORMATS:  # `-o dag.svg` meant the picture before -o meant the format
            out_file, output = out_file or Path(output), "table"
        submission = _submission(address, submission_id)
        shape, status = submission.graph(), submission.status().to_dict()
        emit({"graph": shape, "status": status}, Output(output.lower()), lambda: graph_view.table(shape, status))
        if out_file is not None:
            _write_picture(out_file, shape, status)


def lineage(submission_id: str, address: AddressOpt = None,
            output: Annotated[str, typer.Option(
                "--output", "-o", help="jsonl (default: one RunEvent a line, as the lineage file), json or yaml")
                              ] = "jsonl") -> None:
    """Print a submission's OpenLineage RunEvents (what the lineage file and Marquez receive)."""
    if output not in ("jsonl", "json", "yaml", "table"):
        raise typer.BadParameter(f"{output!r} is not one of jsonl, json, yaml", param_hint="--output")
    with failing():
        events = _submission(address, submission_id).lineage()
    if output in ("jsonl", "table"):  # a RunEvent does not fit a table: one JSON line each
        for event in events:
            sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
    else:
        emit(events, Output(output), lambda: "")


def follow_logs(submission: Any, node: str, poll_s: float = 0.5, timeout: float | None = None) -> str:
    """Print the node's log as it grows (a running attempt's output arrives in chunks, about every second) and its state
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

