"""The `fabric` command: one Typer app that gathers every command of the CLI package."""

from __future__ import annotations

from typing import Annotated

import typer

from fabric.cli import backfills, doctor, observe, pipelines, read, run
from fabric.cli.common import fabric_version
from fabric.cli.k8s import k8s_app

app = typer.Typer(add_completion=True, no_args_is_help=True,
                  help="fabric: DAGs of quant and ML work on Ray, no separate broker.")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"fabric {fabric_version()}")
        raise typer.Exit()


@app.callback()
def _root(show_version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True, help="print fabric's version and exit")] = False) -> None:
    """fabric: DAGs of quant and ML work on Ray, no separate broker."""


for command in (run.run, run.validate, run.schema, run.submit, read.status, read.logs, read.cancel):
    app.command()(command)
app.command("ls")(read.list_submissions)
app.command()(run.token)
app.command()(run.up)
app.command()(observe.graph)
app.command()(observe.lineage)
app.command()(doctor.doctor)
app.command()(read.rerun)
app.command()(pipelines.register)
app.command()(pipelines.pipelines)
app.command()(pipelines.start)
app.command()(pipelines.schedule)
app.command()(pipelines.schedules)
app.command()(backfills.backfill)
app.command()(backfills.backfills)
app.command()(backfills.trigger)
app.add_typer(read.audit, name="audit")
app.add_typer(k8s_app, name="k8s")
