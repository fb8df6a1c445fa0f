"""The commands that start runs of a registered pipeline in bulk or from an event: `backfill` (one run per date),
`backfills` (their progress, cancel) and `trigger` (idempotent by its key)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from fabric.cli.common import AddressOpt, connect
from fabric.cli.exits import failing
from fabric.cli.output import Output, OutputOpt, emit
from fabric.cli.pipelines import ParamOpt, parse_param

COUNTED = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED")


def backfill(pipeline_id: Annotated[str, typer.Argument(help="a registered pipeline")],
             start: Annotated[str, typer.Option(help="the first date, YYYY-MM-DD")],
             end: Annotated[str, typer.Option(help="the last date, included")],
             step: Annotated[str, typer.Option(help="Nd (days), Nw (weeks) or Nb (business days)")] = "1d",
             param: ParamOpt = None,
             date_param: Annotated[str, typer.Option(help="the date or string param each run's date goes into")
                                   ] = "as_of",
             max_active: Annotated[int, typer.Option(help="at most this many of its runs at once")] = 4,
             version: Annotated[int | None, typer.Option(help="this version (default: the latest)")] = None,
             backfill_id: Annotated[str | None, typer.Option(
                 "--id", help="its name and idempotency key (default: made, bf-...)")] = None,
             address: AddressOpt = None, output: OutputOpt = Output.TABLE) -> None:
    """Start a backfill: one run per date from --start to --end; dates whose identical run SUCCEEDED are skipped."""
    with failing():
        reply = connect(address).backfill(
            pipeline_id, start, end, step=step, params=dict(parse_param(item) for item in param or []),
            date_param=date_param, max_active=max_active, version=version, backfill_id=backfill_id)
    emit(reply, output, lambda: _table([reply], f"backfill {reply['backfill_id']}"))


def backfills(backfill_id: Annotated[str | None, typer.Argument(help="show this backfill, date by date")] = None,
              pipeline: Annotated[str | None, typer.Option(help="only this pipeline's backfills")] = None,
              cancel: Annotated[bool, typer.Option("--cancel", help="cancel it as a whole")] = False,
              address: AddressOpt = None, output: OutputOpt = Output.TABLE) -> None:
    """List backfills with their counts per state; with an id, its dates (and --cancel to cancel it)."""
    with failing():
        client = connect(address)
        if backfill_id is None:
            items = client.backfills(pipeline)
            emit(items, output, lambda: _table(items, "backfills"))
            return
        reply = client.cancel_backfill(backfill_id) if cancel else client.backfill_status(backfill_id)
    emit(reply, output, lambda: _dates(reply))


def trigger(pipeline_id: Annotated[str, typer.Argument(help="a registered pipeline")],
            key: Annotated[str, typer.Option(help="the idempotency key: the same key again starts nothing new")],
            param: ParamOpt = None,
            version: Annotated[int | None, typer.Option(help="this version (default: the latest)")] = None,
            address: AddressOpt = None, output: OutputOpt = Output.TABLE) -> None:
    """Start a run by name as an event trigger: the run's id derives from the pipeline and --key."""
    with failing():
        reply = connect(address).trigger(pipeline_id, key, dict(parse_param(item) for item in param or []) or None,
                                         version=version)
    if reply.get("skipped"):
        emit(reply, output, lambda: f"skipped: {reply.get('reason', '')}")
        return
    emit(reply, output, lambda: f"{reply['submission_id']} ({'started' if reply['created'] else 'already started'})")


def _table(items: list[dict[str, Any]], title: str) -> Table:
    table = Table(show_edge=False, title=title)
    for column in ("backfill", "pipeline", "dates", "state", *(s.lower() for s in COUNTED)):
        table.add_column(column)
    for item in items:
        table.add_row(item["backfill_id"], f"{item['pipeline_id']} v{item['version']}",
                      f"{item['start']}..{item['end']} /{item['step']}", item["state"],
                      *(str(item["counts"].get(s, 0)) for s in COUNTED))
    return table


def _dates(item: dict[str, Any]) -> Table:
    counts = ", ".join(f"{s.lower()} {n}" for s, n in item["counts"].items() if n)
    table = Table(show_edge=False, title=f"{item['backfill_id']}: {item['state']} ({counts})")
    for column in ("date", "state", "submission"):
        table.add_column(column)
    for run in item["runs"]:
        table.add_row(run["date"], run["state"], run.get("submission_id") or run.get("error", "") or "-")
    return table
