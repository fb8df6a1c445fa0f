"""The commands that start work: `run` (embedded local Ray), `validate`, `schema`, `submit`, `up`, `token`."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live

from fabric.cli.common import AddressOpt, DagArg, ParamsOpt, connect, params
from fabric.cli.console import describe_value, err, error_text, metrics_table, out, status_table
from fabric.cli.exits import ExitCode, failing
from fabric.cli.pipelines import ParamOpt, parse_param
from fabric.errors import ErrorCode, FabricError, SpecError
from fabric.spec import dag_json_schema, load_spec, runtime_params_json_schema


def follow(submission: Any, live: bool, timeout: float | None) -> Any:
    """Wait for the submission to end (or `timeout`), as a live table when `live`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    if not live:
        return submission.wait(timeout)
    with Live(status_table(submission.status()), console=out, refresh_per_second=4, transient=False) as view:
        while True:
            status = submission.status()
            view.update(status_table(status))
            if status.done:
                return status
            if deadline is not None and time.monotonic() > deadline:
                return status
            time.sleep(0.25)


def _print_results(submission: Any, status: Any, spec: Any) -> None:
    """The outputs of the DAG's sink nodes; a dict out named `metrics` as a table."""
    for node in status.nodes:
        if spec.downstream(node.node_id) or not node.state.ok:
            continue
        for name in spec.node(node.node_id).outs or [None]:
            value = submission.result(node.node_id, name)
            label = f"{node.node_id}.{name}" if name else node.node_id
            if name == "metrics" and isinstance(value, dict):
                out.print(metrics_table(value))
            else:
                out.print(f"[bold]{label}[/] = {describe_value(value)}")


def _print_failures(submission: Any, status: Any) -> None:
    for node in status.nodes:
        if node.error is not None and node.state in ("FAILED", "TIMED_OUT"):
            err.print(f"[bold red]{node.node_id}[/] {node.state} after {node.attempts} attempt(s): "
                      f"{node.error.type}: {node.error.message}")
            if node.error.traceback:
                err.print("[dim]" + "\n".join(node.error.traceback.splitlines()[-8:]) + "[/]")
            logs = submission.logs(node.node_id)
            if logs.strip():
                err.print("[dim]" + "\n".join(logs.splitlines()[-10:]) + "[/]")


def run(dag: DagArg, params_: ParamsOpt = None, param: ParamOpt = None,
        num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all)")] = None,
        num_gpus: Annotated[int | None, typer.Option(help="GPUs of the local Ray")] = None,
        timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no live table")] = False,
        gateway: Annotated[int | None, typer.Option(help="also start the HTTP gateway on this port, and keep it "
                                                          "up after the run (models it served answer)")] = None,
        ) -> None:
    """Run a DAG on a fresh local Ray (the embedded default), live, then print results and a summary."""
    import fabric.client as client
    from fabric.cli.gateway import hold, mint_token, start_gateway, tokens_path

    with failing():
        spec = load_spec(dag)
        runtime = params(params_)
        if param:  # -P NAME=VALUE over -p's params, as `fabric start` takes them
            runtime["params"] = {**runtime.get("params", {}), **dict(parse_param(item) for item in param)}
        started = time.monotonic()
        with out.status("starting a local Ray…", spinner="dots"):
            fabric_client = client.connect("local", num_cpus=num_cpus, num_gpus=num_gpus)
            if gateway is not None:
                tokens = tokens_path()
                token = mint_token(tokens, "default", admin=True)
                url = start_gateway(tokens, gateway)
                sys.stderr.write(f"gateway: {url}\ntoken (shown once): {token}\n")  # plain: never wrapped
        submission = fabric_client.submit(spec, runtime)
        status = follow(submission, live=not quiet and out.is_terminal, timeout=timeout)
        if quiet or not out.is_terminal:
            out.print(status_table(status))
        if status.state == "SUCCEEDED":
            _print_results(submission, status, spec)
        else:
            _print_failures(submission, status)
    took = time.monotonic() - started
    out.print(f"[bold]{status.state}[/] {status.pipeline_id} {submission.id} in {took:.1f}s "
              f"({', '.join(f'{k.lower()} {v}' for k, v in sorted(status.counts.items()))})")
    if gateway is not None and status.state == "SUCCEEDED":
        out.print(f"the gateway stays up at {url} (POST /api/predict/<name>); Ctrl-C stops it")
        hold()
    raise typer.Exit(ExitCode.OK if status.state == "SUCCEEDED" else ExitCode.FAILED)


def validate(dag: DagArg, params_: ParamsOpt = None) -> None:
    """Check a DAG spec (and runtime params); print every problem at once."""
    with failing():
        spec = load_spec(dag)
        params(params_)
    from fabric.kinds import kind_checks
    from fabric.plan import kind_problems
    from fabric.spec.subdags import expand, has_pipelines

    try:  # inline sub-pipelines are checked expanded; a registered one needs its registry
        spec = load_spec(expand(spec.to_dict(), None)) if has_pipelines(spec.to_dict()) else spec
        problems = kind_problems(spec, kind_checks())
    except SpecError as exc:
        problems = list(exc.problems)
    summary = f"{spec.pipeline_id}: {len(spec.nodes)} nodes, {len(spec.edges)} edges"
    if problems:
        out.print(f"[yellow]the spec is valid[/] ({summary}), [bold]but it cannot run here:[/]")
        err.print(error_text(SpecError(f"it cannot run here: {len(problems)} problem(s)",
                                       code=ErrorCode.KIND_NOT_RUNNABLE, problems=tuple(problems))))
        raise typer.Exit(ExitCode.BAD_INPUT)
    out.print(f"[green]valid[/] {summary}")


def schema(runtime_params: Annotated[bool, typer.Option("--runtime-params", help="the runtime params schema")] = False
           ) -> None:
    """Print the JSON Schema of the DAG spec (or of the runtime params)."""
    sys.stdout.write(json.dumps(runtime_params_json_schema() if runtime_params else dag_json_schema(), indent=2) + "\n")


def submit(dag: DagArg, params_: ParamsOpt = None, address: AddressOpt = None,
           working_dir: Annotated[str | None, typer.Option(
               "--working-dir", help="upload this directory for the nodes' code (Ray's runtime_env; "
                                     ".gitignore is honoured)")] = None,
           wait: Annotated[bool, typer.Option(help="follow it until it ends")] = False) -> None:
    """Submit a DAG to a running cluster and print its submission id."""
    with failing():
        spec = load_spec(dag)
        runtime = params(params_)
        submission = connect(address, working_dir).submit(spec, runtime)
        out.print(submission.id)
        if wait:
            status = follow(submission, live=out.is_terminal, timeout=None)
            raise typer.Exit(ExitCode.OK if status.state == "SUCCEEDED" else ExitCode.FAILED)


def token(team: Annotated[str, typer.Option(help="the team this token acts for")],
          admin: Annotated[bool, typer.Option(help="may use the admin routes (the same as --role admin)")] = False,
          role: Annotated[str | None, typer.Option(
              help="admin | developer (ships its own code; the default) | runner (registered code only)")] = None,
          file: Annotated[Path | None, typer.Option(
              help="tokens file (default: FABRIC_TOKENS, else $FABRIC_HOME/tokens.yaml)")] = None,
          ) -> None:
    """Make a gateway token for a team: the file keeps only its hash, the token is printed once."""
    from fabric.cli.gateway import mint_token, tokens_path
    from fabric.spec.teams import Role

    path = file or tokens_path()
    with failing():
        if role is not None and role not in {r.value for r in Role}:
            raise FabricError(f"unknown role {role!r}", code=ErrorCode.SPEC_FIELD, where="--role",
                              fix=f"use one of: {', '.join(r.value for r in Role)}")
        minted = mint_token(path, team, admin, role)
    sys.stdout.write(minted + "\n")
    err.print(f"[dim]added to {path} (hashed)[/]")


def up(port: Annotated[int, typer.Option(help="HTTP port of the gateway")] = 8000,
       host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
       num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all)")] = None,
       replicas: Annotated[int, typer.Option(help="gateway replicas")] = 1,
       mlflow_port: Annotated[int, typer.Option(help="port of the MLflow tracking server; 0: start none")] = 5000,
       ) -> None:
    """Start a local Ray with the fabric registry, the HTTP gateway and an MLflow tracking server that ML
    nodes log to over HTTP; Ctrl-C stops them all."""
    import os

    import ray

    import fabric.client as client
    from fabric.cli.gateway import hold, mint_token, start_gateway, tokens_path
    from fabric.ml.server import start_server
    from fabric.settings import ENV, settings

    tokens, config = tokens_path(), settings()
    tracking = None
    with failing():
        admin_token = None if tokens.exists() else mint_token(tokens, "admin", admin=True)
        if mlflow_port and importlib.util.find_spec("mlflow") is None:
            err.print("MLflow is not installed (the `train` or `mlflow` extra): no tracking server is started")
            mlflow_port = 0
        if mlflow_port:
            tracking = start_server(config.home, config.artifacts, host=host, port=mlflow_port, store=config.store)
            os.environ[ENV["mlflow_uri"]] = tracking.uri  # the local Ray (and so every node) inherits it
        try:
            client.connect("local", num_cpus=num_cpus)
            url = start_gateway(tokens, port, host=host, replicas=replicas)
        except BaseException:
            if tracking:
                tracking.stop()
            raise
    out.print(f"[bold green]fabric is up[/]: {url}  (API docs: {url}/docs)")
    if tracking:
        out.print(f"MLflow: {tracking.uri}  (nodes log here; store {config.home}/mlflow.db)")
    out.print(f"web UI: {url}/ui/#token={admin_token}" if admin_token else f"web UI: {url}/ui/  (sign in with a token)",
              soft_wrap=True)
    out.print(f"tokens file: {tokens}" + (f"\nadmin token (shown once): {admin_token}" if admin_token else
                                         "  (make one with `fabric token --team NAME`)"))
    try:
        hold()
    finally:
        ray.shutdown()  # this command started the cluster: stopping it stops the gateway and the registry
        if tracking:
            tracking.stop()
