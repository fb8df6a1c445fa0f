"""`fabric k8s`: run a DAG as a KubeRay RayJob, and list, follow and delete those jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console

from fabric.console import error_text
from fabric.errors import FabricError, SpecError
from fabric.k8s import DEFAULT_IMAGE, MANAGED_SELECTOR, KubeRay, context_namespace, job_finished, rayjob_for_dag
from fabric.spec import parse_runtime_params, read_spec

k8s_app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="Run DAGs as KubeRay RayJobs on Kubernetes (needs the KubeRay operator).")
out = Console()
err = Console(stderr=True)

# The same exit codes as `fabric` itself (fabric/cli.py); not imported from there, which imports this module.
EXIT_FAILED, EXIT_INVALID, EXIT_ERROR = 1, 2, 3

NamespaceOpt = Annotated[str | None, typer.Option(
    "--namespace", "-n", help="Kubernetes namespace (default: the kubeconfig context's, else default)")]
KubeconfigOpt = Annotated[Path | None, typer.Option(
    "--kubeconfig", help="kubeconfig file (default: KUBECONFIG, ~/.kube/config, else the pod's service account)")]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context (default: the current one)")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="stop following after this many seconds")]


def _fail(error: FabricError) -> NoReturn:
    err.print(error_text(error))
    raise typer.Exit(EXIT_INVALID if isinstance(error, SpecError) else EXIT_ERROR)


def _params(value: str | None) -> dict[str, Any]:
    """Runtime params from a YAML/JSON file or inline JSON, read as safely as a spec."""
    if not value:
        return {}
    path = Path(value)
    raw = read_spec(path if path.exists() else value)
    return parse_runtime_params(raw).model_dump(mode="json", exclude_none=True, exclude_defaults=True)


def _kuberay(namespace: str | None, kubeconfig: Path | None, context: str | None) -> KubeRay:
    return KubeRay(namespace, kubeconfig=kubeconfig, context=context)


def _follow(kuberay: KubeRay, name: str, timeout: float) -> int:
    """Print each status change of the RayJob; the exit code of how it ended."""
    status: dict[str, Any] = {}
    for status in kuberay.watch_rayjob(name, timeout_s=timeout):
        out.print(f"{name}: {status.get('jobDeploymentStatus', '-')} / {status.get('jobStatus', '-')}"
                  + (f"  {status['message']}" if status.get("message") else ""))
    if not job_finished(status):
        out.print(f"{name}: still running after {timeout:.0f}s; follow it with `fabric k8s status {name} --watch`")
        return EXIT_FAILED
    return 0 if status.get("jobStatus") == "SUCCEEDED" else EXIT_FAILED


@k8s_app.command()
def submit(dag: Annotated[Path, typer.Argument(help="DAG spec, YAML or JSON")],
           params: Annotated[str | None, typer.Option(
               "--params", "-p", help="runtime params: a YAML/JSON file or inline JSON")] = None,
           image: Annotated[str, typer.Option(envvar="FABRIC_IMAGE", help="image with fabric installed")
                            ] = DEFAULT_IMAGE,
           namespace: NamespaceOpt = None,
           name: Annotated[str | None, typer.Option(help="RayJob name (default: from the pipeline id)")] = None,
           cluster: Annotated[str | None, typer.Option(
               help="run on this existing RayCluster (e.g. fabric) instead of a cluster of the job's own")] = None,
           max_workers: Annotated[int, typer.Option(help="most CPU workers of the job's own cluster")] = 4,
           watch: Annotated[bool, typer.Option("--watch/--no-watch", help="follow the job until it ends")] = False,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="print the RayJob as YAML; contact nothing")
                              ] = False,
           kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, timeout: TimeoutOpt = 3600.0) -> None:
    """Submit a DAG as a RayJob and print the RayJob's name."""
    namespace = namespace or context_namespace(kubeconfig, context) or "default"
    try:
        manifest = rayjob_for_dag(dag, name=name, image=image, runtime_params=_params(params), namespace=namespace,
                                  cluster=cluster, max_workers=max_workers)
    except FabricError as exc:
        _fail(exc)
    if dry_run:
        # Plain stdout, no rich: the entrypoint is one long line of JSON that must not wrap or lose brackets.
        sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False, width=1 << 30))
        return
    try:
        kuberay = _kuberay(namespace, kubeconfig, context)
        created = kuberay.create_rayjob(manifest)
        job_name = created["metadata"]["name"]
        sys.stdout.write(job_name + "\n")
        code = _follow(kuberay, job_name, timeout) if watch else 0
    except FabricError as exc:
        _fail(exc)
    raise typer.Exit(code)


@k8s_app.command()
def status(name: str, namespace: NamespaceOpt = None,
           watch: Annotated[bool, typer.Option("--watch", "-w", help="follow it until it ends")] = False,
           as_json: Annotated[bool, typer.Option("--json", help="the whole status as JSON")] = False,
           kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, timeout: TimeoutOpt = 3600.0) -> None:
    """Show a RayJob's status (with --watch, every change until it ends)."""
    try:
        kuberay = _kuberay(namespace, kubeconfig, context)
        if watch:
            raise typer.Exit(_follow(kuberay, name, timeout))
        current = kuberay.get_rayjob(name).get("status") or {}
    except FabricError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(current, indent=2) + "\n")
    else:
        out.print(f"{name}: {current.get('jobDeploymentStatus', '-')} / {current.get('jobStatus', '-')}"
                  + (f"  {current['message']}" if current.get("message") else ""))


@k8s_app.command("list")
def list_jobs(namespace: NamespaceOpt = None,
              all_jobs: Annotated[bool, typer.Option("--all", help="every RayJob, not only fabric's")] = False,
              kubeconfig: KubeconfigOpt = None, context: ContextOpt = None) -> None:
    """List the RayJobs that fabric created in a namespace."""
    from rich.table import Table

    try:
        jobs = _kuberay(namespace, kubeconfig, context).list_rayjobs(None if all_jobs else MANAGED_SELECTOR)
    except FabricError as exc:
        _fail(exc)
    table = Table(show_edge=False)
    for column in ("rayjob", "pipeline", "deployment", "job"):
        table.add_column(column, no_wrap=column in ("rayjob", "pipeline"))
    for job in sorted(jobs, key=lambda j: j["metadata"].get("creationTimestamp", "")):  # oldest first, like ls
        meta, current = job["metadata"], job.get("status") or {}
        table.add_row(meta["name"], (meta.get("annotations") or {}).get("fabric.io/pipeline-id", "-"),
                      current.get("jobDeploymentStatus", "-"), current.get("jobStatus", "-"))
    out.print(table)


@k8s_app.command()
def delete(name: str, namespace: NamespaceOpt = None,
           kubeconfig: KubeconfigOpt = None, context: ContextOpt = None) -> None:
    """Delete a RayJob: KubeRay stops the job and removes its cluster."""
    try:
        _kuberay(namespace, kubeconfig, context).delete_rayjob(name)
    except FabricError as exc:
        _fail(exc)
    out.print(f"deleted RayJob {name}")


if __name__ == "__main__":
    k8s_app()
