"""The `fabric` command: run a DAG on an embedded local Ray, or submit and follow on a cluster."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live

from fabric import cli_observe
from fabric.cli_k8s import k8s_app
from fabric.console import describe_value, error_text, metrics_table, status_table
from fabric.errors import ErrorCode, FabricError, SpecError
from fabric.spec import dag_json_schema, load_spec, parse_runtime_params, read_spec, runtime_params_json_schema

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="fabric: DAGs of quant and ML work on Ray, no separate broker.")
out = Console()
err = Console(stderr=True)

EXIT_FAILED, EXIT_INVALID, EXIT_ERROR = 1, 2, 3

DagArg = Annotated[Path, typer.Argument(help="DAG spec, YAML or JSON", exists=False)]
ParamsOpt = Annotated[str | None, typer.Option("--params", "-p",
                                               help="runtime params: a YAML/JSON file or inline JSON")]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", envvar="FABRIC_ADDRESS",
    help="Ray address (default: RAY_ADDRESS or auto), or the gateway's http(s):// URL with FABRIC_TOKEN set")]


def _params(value: str | None) -> dict[str, Any]:
    """Runtime params from a YAML/JSON file or inline JSON, read as safely as a spec."""
    if not value:
        return {}
    path = Path(value)
    return parse_runtime_params(read_spec(path if path.exists() else value)).model_dump(mode="json",
                                                                                         exclude_none=True)


def _fail(error: FabricError) -> None:
    err.print(error_text(error))
    raise typer.Exit(EXIT_INVALID if isinstance(error, SpecError) else EXIT_ERROR)


def _connect(address: str | None, working_dir: str | None = None) -> Any:
    import fabric.client as client

    if working_dir and address and address.startswith(("http://", "https://")):
        raise FabricError("--working-dir uploads through Ray; the gateway takes no files",
                          code=ErrorCode.SPEC_FIELD, where="--working-dir",
                          fix="upload a zip to s3:// or gs:// and pass it as runtime_params.runtime_env.working_dir")
    runtime_env = {"working_dir": working_dir} if working_dir else None
    return client.connect(address or "auto", runtime_env=runtime_env)


def _follow(submission: Any, live: bool, timeout: float | None) -> Any:
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
            node_id = node.node_id
            value = submission.result(node_id, name)
            label = f"{node_id}.{name}" if name else node_id
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


@app.command()
def run(dag: DagArg, params: ParamsOpt = None,
        num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all)")] = None,
        num_gpus: Annotated[int | None, typer.Option(help="GPUs of the local Ray")] = None,
        timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no live table")] = False,
        gateway: Annotated[int | None, typer.Option(help="also start the HTTP gateway on this port, and keep it "
                                                          "up after the run (models it served answer)")] = None,
        ) -> None:
    """Run a DAG on a fresh local Ray (the embedded default), live, then print results and a summary."""
    try:
        spec = load_spec(dag)
        runtime = _params(params)
    except FabricError as exc:
        _fail(exc)
    import fabric.client as client

    started = time.monotonic()
    with out.status("starting a local Ray…", spinner="dots"):
        fabric_client = client.connect("local", num_cpus=num_cpus, num_gpus=num_gpus)
        if gateway is not None:
            from fabric.cli_serve import hold, start_gateway

            url, token = start_gateway(gateway, _home())
            sys.stderr.write(f"gateway: {url}\ntoken (shown once): {token}\n")  # plain: never wrapped
    try:
        submission = fabric_client.submit(spec, runtime)
    except FabricError as exc:
        _fail(exc)
    status = _follow(submission, live=not quiet and out.is_terminal, timeout=timeout)
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
    raise typer.Exit(0 if status.state == "SUCCEEDED" else EXIT_FAILED)


@app.command()
def validate(dag: DagArg, params: ParamsOpt = None) -> None:
    """Check a DAG spec (and runtime params); print every problem at once."""
    try:
        spec = load_spec(dag)
        _params(params)
    except FabricError as exc:
        _fail(exc)
    from fabric.kinds import kind_checks
    from fabric.plan import kind_problems

    problems = kind_problems(spec, kind_checks())
    summary = f"{spec.pipeline_id}: {len(spec.nodes)} nodes, {len(spec.edges)} edges"
    if problems:
        out.print(f"[yellow]the spec is valid[/] ({summary}), [bold]but it cannot run here:[/]")
        err.print(error_text(SpecError(f"it cannot run here: {len(problems)} problem(s)",
                                       code=ErrorCode.KIND_NOT_RUNNABLE, problems=tuple(problems))))
        raise typer.Exit(EXIT_INVALID)
    out.print(f"[green]valid[/] {summary}")


@app.command()
def schema(runtime_params: Annotated[bool, typer.Option("--runtime-params", help="the runtime params schema")] = False
           ) -> None:
    """Print the JSON Schema of the DAG spec (or of the runtime params)."""
    sys.stdout.write(json.dumps(runtime_params_json_schema() if runtime_params else dag_json_schema(), indent=2) + "\n")


@app.command()
def submit(dag: DagArg, params: ParamsOpt = None, address: AddressOpt = None,
           working_dir: Annotated[str | None, typer.Option(
               "--working-dir", help="upload this directory for the nodes' code (Ray's runtime_env; "
                                     ".gitignore is honoured)")] = None,
           wait: Annotated[bool, typer.Option(help="follow it until it ends")] = False) -> None:
    """Submit a DAG to a running cluster and print its submission id."""
    try:
        spec = load_spec(dag)
        runtime = _params(params)
        submission = _connect(address, working_dir).submit(spec, runtime)
    except FabricError as exc:
        _fail(exc)
    out.print(submission.id)
    if wait:
        status = _follow(submission, live=out.is_terminal, timeout=None)
        raise typer.Exit(0 if status.state == "SUCCEEDED" else EXIT_FAILED)


@app.command()
def status(submission_id: str, address: AddressOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
           watch: Annotated[bool, typer.Option("--watch", "-w", help="live until it ends")] = False) -> None:
    """Show a submission's state and its nodes."""
    try:
        submission = _connect(address).get(submission_id)
        current = _follow(submission, live=True, timeout=None) if watch else submission.status()
    except FabricError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(current.to_dict(), default=str, indent=2) + "\n")
    elif not watch:
        out.print(status_table(current))


@app.command()
def logs(submission_id: str, node: Annotated[str, typer.Option("--node", "-n", help="node id")],
         address: AddressOpt = None,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the node ends")] = False,
         ) -> None:
    """Print a node's captured output, every attempt."""
    try:
        submission = _connect(address).get(submission_id)
        if follow:
            cli_observe.follow_logs(submission, node)
        else:
            sys.stdout.write(submission.logs(node))
    except FabricError as exc:
        _fail(exc)


@app.command()
def cancel(submission_id: str, address: AddressOpt = None) -> None:
    """Cancel a submission: its running Ray tasks are cancelled, pending nodes never start."""
    try:
        _connect(address).get(submission_id).cancel()
    except FabricError as exc:
        _fail(exc)
    out.print(f"cancelling {submission_id}")


@app.command("ls")
def list_submissions(address: AddressOpt = None,
                     state: Annotated[str | None, typer.Option(help="only this state")] = None,
                     limit: Annotated[int, typer.Option(help="at most this many")] = 50) -> None:
    """List recent submissions."""
    from rich.table import Table

    table = Table(show_edge=False)
    table.add_column("submission", no_wrap=True, min_width=26)
    for column in ("pipeline", "state", "created"):
        table.add_column(column)
    for item in _connect(address).list(state, limit):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["created_at"]))
        table.add_row(item["submission_id"], item["pipeline_id"], item["state"], created)
    out.print(table)


@app.command()
def token(team: Annotated[str, typer.Option(help="the team this token acts for")],
          admin: Annotated[bool, typer.Option(help="may use the admin routes")] = False,
          file: Annotated[Path | None, typer.Option(help="tokens file (default: $FABRIC_HOME/tokens.yaml)")] = None,
          ) -> None:
    """Make a gateway token for a team: the file keeps only its hash, the token is printed once."""
    from serve.auth import mint_token

    path = file or Path(_home()) / "tokens.yaml"
    sys.stdout.write(mint_token(path, team, admin) + "\n")
    err.print(f"[dim]added to {path} (hashed)[/]")


@app.command()
def up(port: Annotated[int, typer.Option(help="HTTP port of the gateway")] = 8000,
       host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
       num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all)")] = None,
       replicas: Annotated[int, typer.Option(help="gateway replicas")] = 1) -> None:
    """Start a local Ray with the fabric registry and the HTTP gateway; Ctrl-C stops both."""
    import signal

    import ray
    from ray import serve

    import fabric.client as client
    from serve.auth import mint_token
    from serve.gateway import build_app

    tokens = Path(os.environ.get("FABRIC_TOKENS") or Path(_home()) / "tokens.yaml")
    admin_token = None if tokens.exists() else mint_token(tokens, "admin", admin=True)
    client.connect("local", num_cpus=num_cpus)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app({"tokens_file": str(tokens), "num_replicas": str(replicas)}), name="fabric-gateway",
              route_prefix="/")
    out.print(f"[bold green]fabric is up[/]: http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
    ui = f"http://{host}:{port}/ui/"
    out.print(f"web UI: {ui}#token={admin_token}" if admin_token else f"web UI: {ui}  (sign in with a token)",
              soft_wrap=True)
    out.print(f"tokens file: {tokens}" + (f"\nadmin token (shown once): {admin_token}" if admin_token else
                                         "  (make one with `fabric token --team NAME`)"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    ray.shutdown()  # this command started the cluster: stopping it stops the gateway and the registry


audit = typer.Typer(help="The append-only audit log of every state change.", no_args_is_help=True)
app.add_typer(audit, name="audit")
app.add_typer(k8s_app, name="k8s")
cli_observe.register(app)  # fabric graph, fabric lineage


@audit.command("export")
def audit_export(out_file: Annotated[Path, typer.Argument(help="the Parquet file to write")],
                 submission: Annotated[str | None, typer.Option(help="only this submission's events")] = None,
                 ) -> None:
    """Write the audit events (all, or one submission's) from $FABRIC_HOME/fabric.db as Parquet."""
    from fabric.record import SqliteStore

    db = Path(_home()) / "fabric.db"
    try:
        with SqliteStore(db, read_only=True) as store:  # read-only: safe beside a running registry
            count = store.export_events_parquet(out_file, submission)
    except FabricError as exc:
        _fail(exc)
    out.print(f"{count} events -> {out_file}")


def _home() -> str:
    return os.environ.get("FABRIC_HOME") or str(Path.home() / ".fabric")


def main() -> None:
    from fabric.logs import configure_logging
    from fabric.settings import settings

    try:
        log_format = settings().log_format
    except FabricError:  # a bad setting: the command that reads it reports it, with its fix
        log_format = "text"
    configure_logging(log_format)  # FABRIC_LOG_FORMAT=json: fabric's log records as JSON lines (fabric/logs.py)
    app()


if __name__ == "__main__":
    main()
