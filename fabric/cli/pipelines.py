"""The catalogue's commands: `register` a spec as a pipeline version, list `pipelines`, `start` a run by name,
`schedule` it and list `schedules` with their next fire times."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from fabric.cli.common import AddressOpt, DagArg, ParamsOpt, connect, params
from fabric.cli.exits import failing
from fabric.cli.output import Output, OutputOpt, emit
from fabric.errors import ErrorCode, FabricError

ParamOpt = Annotated[list[str] | None, typer.Option(
    "--param", "-P", help="a pipeline param as NAME=VALUE (repeatable); VALUE is read as JSON when it parses "
                          "(5, true, [\"a\"]), else as text (2024-01-31)")]


def parse_param(item: str) -> tuple[str, Any]:
    """NAME=VALUE, the value as JSON when it is JSON, else the text itself."""
    name, sep, text = item.partition("=")
    if not sep or not name:
        raise FabricError(f"--param {item!r} is not NAME=VALUE", code=ErrorCode.SPEC_FIELD, where="--param",
                          fix="write it as --param as_of=2024-01-31")
    try:
        return name, json.loads(text)
    except ValueError:
        return name, text


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def register(dag: DagArg, address: AddressOpt = None,
             max_active_runs: Annotated[int | None, typer.Option(
                 help="at most this many runs by name at once (default: no limit)")] = None,
             overlap: Annotated[str, typer.Option(
                 help="at the limit: skip the new run, cancel_older runs to make room, or queue it")] = "skip",
             output: OutputOpt = Output.TABLE) -> None:
    """Register a DAG spec under its pipeline_id as a new immutable version."""
    with failing():
        reply = connect(address).register(dag, max_active_runs, overlap)
    verb = "registered" if reply["created"] else "unchanged, already"
    emit(reply, output, lambda: f"{reply['pipeline_id']} {verb} version {reply['version']}")


def pipelines(pipeline_id: Annotated[str | None, typer.Argument(
                  help="show this pipeline's versions and recent runs")] = None,
              address: AddressOpt = None,
              limit: Annotated[int, typer.Option(help="at most this many recent runs")] = 20,
              output: OutputOpt = Output.TABLE) -> None:
    """List registered pipelines, or one pipeline's versions and recent runs."""
    with failing():
        client = connect(address)
        if pipeline_id is None:
            items = client.pipelines()
            emit(items, output, lambda: _pipelines_table(items))
            return
        versions = client.pipeline_versions(pipeline_id)
        runs = client.pipeline_runs(pipeline_id, limit)
    data = {"pipeline_id": pipeline_id, "versions": versions, "runs": runs}
    emit(data, output, lambda: _detail_table(versions, runs))


def start(pipeline_id: Annotated[str, typer.Argument(help="a registered pipeline")],
          param: ParamOpt = None, params_: ParamsOpt = None, address: AddressOpt = None,
          version: Annotated[int | None, typer.Option(help="this version (default: the latest)")] = None,
          output: OutputOpt = Output.TABLE) -> None:
    """Start a run of a registered pipeline by name, with its params; prints the submission id."""
    with failing():
        given = dict(parse_param(item) for item in param or [])
        reply = connect(address).run_pipeline(pipeline_id, given or None, version=version,
                                              runtime_params=params(params_) or None)
    if reply.get("skipped"):
        emit(reply, output, lambda: f"skipped: {reply.get('reason', '')}")
        return
    emit(reply, output, lambda: reply["submission_id"])


def schedule(pipeline_id: Annotated[str, typer.Argument(help="a registered pipeline")],
             name: Annotated[str, typer.Argument(help="the schedule's name")],
             cron: Annotated[str | None, typer.Option(help="five fields, e.g. '0 6 * * MON-FRI'")] = None,
             timezone: Annotated[str, typer.Option(help="IANA time zone the cron reads in")] = "UTC",
             param: ParamOpt = None,
             version: Annotated[int | None, typer.Option(help="run this version (default: the latest)")] = None,
             start: Annotated[str | None, typer.Option(help="no tick before this date/time")] = None,
             end: Annotated[str | None, typer.Option(help="no tick after this date/time")] = None,
             catch_up: Annotated[str, typer.Option(help="ticks missed while down: none, latest or all")] = "latest",
             max_catch_up: Annotated[int, typer.Option(help="with --catch-up all: at most this many")] = 10,
             pause: Annotated[bool, typer.Option("--pause", help="pause it (with --cron: create it paused)")] = False,
             resume: Annotated[bool, typer.Option("--resume", help="resume it; missed ticks are not fired")] = False,
             address: AddressOpt = None, output: OutputOpt = Output.TABLE) -> None:
    """Create or change a pipeline's cron schedule (with --cron), or pause or resume it."""
    with failing():
        client = connect(address)
        if cron is None:
            if pause == resume:
                raise FabricError("give --cron to create or change the schedule, or one of --pause and --resume",
                                  code=ErrorCode.SPEC_FIELD, where="--cron",
                                  fix=f"fabric schedule {pipeline_id} {name} --cron '0 6 * * *'")
            row = client.pause_schedule(pipeline_id, name, pause)
        else:
            raw: dict[str, Any] = {"name": name, "cron": cron, "timezone": timezone, "catch_up": catch_up,
                                   "max_catch_up": max_catch_up, "paused": pause,
                                   "params": dict(parse_param(item) for item in param or [])}
            for key, value in (("version", version), ("start", start), ("end", end)):
                if value is not None:
                    raw[key] = value
            row = client.schedule(pipeline_id, raw)
    emit(row, output, lambda: _schedules_table([row]))


def schedules(pipeline_id: Annotated[str | None, typer.Argument(help="only this pipeline's")] = None,
              address: AddressOpt = None, output: OutputOpt = Output.TABLE) -> None:
    """List schedules with their last tick and next fire times."""
    with failing():
        items = connect(address).schedules(pipeline_id)
    emit(items, output, lambda: _schedules_table(items))


def _schedules_table(items: list[dict[str, Any]]) -> Table:
    table = Table(show_edge=False)
    for column in ("pipeline", "schedule", "cron", "zone", "catch-up", "state", "next fires (local time)"):
        table.add_column(column)
    for item in items:
        table.add_row(item["pipeline_id"], item["name"], item["cron"], item["timezone"], item["catch_up"],
                      "paused" if item["paused"] else "active", ", ".join(_when(t) for t in item["next_fires"]))
    return table


def _pipelines_table(items: list[dict[str, Any]]) -> Table:
    table = Table(show_edge=False)
    for column in ("pipeline", "version", "registered", "max_active_runs", "overlap"):
        table.add_column(column)
    for item in items:
        limit = item.get("max_active_runs")
        table.add_row(item["pipeline_id"], str(item["version"]), _when(item["created_at"]),
                      "-" if limit is None else str(limit), item.get("overlap", ""))
    return table


def _detail_table(versions: list[dict[str, Any]], runs: list[dict[str, Any]]) -> Table:
    table = Table(show_edge=False, title="versions, then recent runs")
    for column in ("version / run", "registered / state", "when", "params / hash"):
        table.add_column(column)
    for v in versions:
        table.add_row(f"v{v['version']}", "registered", _when(v["created_at"]), v["spec_hash"][:12])
    for r in runs:
        table.add_row(r["submission_id"], r["state"], _when(r["created_at"]),
                      f"v{r['version']} {json.dumps(r['params'], sort_keys=True)}")
    return table
