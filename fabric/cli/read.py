"""The commands that read a submission or the record: `status`, `logs`, `ls`, `cancel`, `audit export`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fabric.cli.common import AddressOpt, connect, home
from fabric.cli.console import err, out, status_table, submissions_table
from fabric.cli.exits import failing
from fabric.cli.output import Output, OutputOpt, emit

JsonOpt = Annotated[bool, typer.Option("--json", help="the same as -o json")]


def status(submission_id: str, address: AddressOpt = None, output: OutputOpt = Output.TABLE,
           as_json: JsonOpt = False,
           watch: Annotated[bool, typer.Option("--watch", "-w", help="live until it ends")] = False) -> None:
    """Show a submission's state and its nodes."""
    from fabric.cli.run import follow

    output = Output.JSON if as_json else output
    with failing():
        submission = connect(address).get(submission_id)
        current = follow(submission, live=True, timeout=None) if watch else submission.status()
    if watch and output is Output.TABLE:
        return  # the live table already shows the end
    emit(current, output, lambda: status_table(current))


def logs(submission_id: str, node: Annotated[str, typer.Option("--node", "-n", help="node id")],
         address: AddressOpt = None,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the node ends")] = False,
         output: Annotated[str, typer.Option("--output", "-o", help="text (default) or json: {submission_id, "
                                                                     "node, text}")] = "text",
         ) -> None:
    """Print a node's captured output, every attempt."""
    from fabric.cli.observe import follow_logs
    from fabric.errors import ErrorCode, FabricError

    if output not in ("text", "json", "yaml"):
        raise typer.BadParameter(f"{output!r} is not one of text, json, yaml", param_hint="--output")
    with failing():
        submission = connect(address).get(submission_id)
        if follow and output != "text":
            raise FabricError("--follow prints text as it comes", code=ErrorCode.SPEC_FIELD, where="--output",
                              fix="drop --follow, or -o text")
        if follow:
            follow_logs(submission, node)
            return
        text = submission.logs(node)
    if output == "text":
        sys.stdout.write(text)
    else:
        emit({"submission_id": submission_id, "node": node, "text": text}, Output(output), lambda: text)


def cancel(submission_id: str, address: AddressOpt = None) -> None:
    """Cancel a submission: its running Ray tasks are cancelled, pending nodes never start."""
    with failing():
        connect(address).get(submission_id).cancel()
    out.print(f"cancelling {submission_id}")


def rerun(submission_id: str, from_node: Annotated[str | None, typer.Option(
              "--from", help="re-run this node and every node below it (default: what did not succeed)")] = None,
          address: AddressOpt = None,
          wait: Annotated[bool, typer.Option(help="follow the re-run until it ends")] = False) -> None:
    """Re-run a finished submission as a new one: succeeded nodes reuse their outputs; prints the new id."""
    from fabric.cli.exits import ExitCode
    from fabric.cli.run import follow

    with failing():
        submission = connect(address).rerun(submission_id, from_node)
        out.print(submission.id)
        if wait:
            status = follow(submission, live=out.is_terminal, timeout=None)
            raise typer.Exit(ExitCode.OK if status.state == "SUCCEEDED" else ExitCode.FAILED)


def list_submissions(address: AddressOpt = None,
                     state: Annotated[str | None, typer.Option(help="only this state")] = None,
                     limit: Annotated[int, typer.Option(help="at most this many")] = 50,
                     search: Annotated[str | None, typer.Option(
                         help="only those whose pipeline or id contains this")] = None,
                     cursor: Annotated[str | None, typer.Option(
                         help="the page after this one (printed under the table when there is one)")] = None,
                     output: OutputOpt = Output.TABLE) -> None:
    """List recent submissions, newest first."""
    with failing():
        page = connect(address).list(state, limit, search=search, cursor=cursor)
    emit(list(page), output, lambda: submissions_table(list(page)))
    if output is Output.TABLE and getattr(page, "next_cursor", None):
        err.print(f"[dim]more: fabric ls --cursor {page.next_cursor}[/]")


audit = typer.Typer(help="The append-only audit log of every state change.", no_args_is_help=True)


@audit.command("export")
def audit_export(out_file: Annotated[Path, typer.Argument(help="the Parquet file to write")],
                 submission: Annotated[str | None, typer.Option(help="only this submission's events")] = None,
                 ) -> None:
    """Write the audit events (all, or one submission's) from $FABRIC_HOME/fabric.db as Parquet."""
    from fabric.record import SqliteStore

    db = Path(home()) / "fabric.db"
    with failing(), SqliteStore(db, read_only=True) as store:  # read-only: safe beside a running registry
        count = store.export_events_parquet(out_file, submission)
    out.print(f"{count} events -> {out_file}")
