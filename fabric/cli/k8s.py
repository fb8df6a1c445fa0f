"""`fabric k8s`: run a DAG as a KubeRay RayJob, and list, follow and delete those jobs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from fabric.cli.common import params as read_params
from fabric.cli.console import out
from fabric.cli.exits import ExitCode, failing
from fabric.cli.output import Output, OutputOpt, emit
from fabric.k8s import DEFAULT_IMAGE, MANAGED_SELECTOR, KubeRay, context_namespace, job_finished, rayjob_for_dag
from fabric.settings import settings

k8s_app = typer.Typer(no_args_is_help=True,
                      help="Run DAGs as KubeRay RayJobs on Kubernetes (needs the KubeRay operator).")
NamespaceOpt = Annotated[str | None, typer.Option(
    "--namespace", "-n", help="Kubernetes namespace (default: the kubeconfig context's, else default)")]
KubeconfigOpt = Annotated[Path | None, typer.Option(
    "--kubeconfig", help="kubeconfig file (default: KUBECONFIG, ~/.kube/config, else the pod's service account)")]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context (default: the current one)")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="stop following after this many seconds")]


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
        return ExitCode.FAILED
    return ExitCode.OK if status.get("jobStatus") == "SUCCEEDED" else ExitCode.FAILED


@k8s_app.command()
def submit(dag: Annotated[Path, typer.Argument(help="DAG spec, YAML or JSON")],
           params: Annotated[str | None, typer.Option(
               "--params", "-p", help="runtime params: a YAML/JSON file or inline JSON")] = None,
           image: Annotated[str | None, typer.Option(
               help=f"image with fabric installed (default: FABRIC_IMAGE, else {DEFAULT_IMAGE})")] = None,
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
    with failing("--kubeconfig"):
        namespace = namespace or context_namespace(kubeconfig, context) or "default"
        runtime = read_params(params, exclude_defaults=True)
        image = image or settings().image
        manifest = rayjob_for_dag(dag, name=name, image=image, runtime_params=runtime, namespace=namespace,
                                  cluster=cluster, max_workers=max_workers)
        if dry_run:
            # Plain stdout, no rich: the entrypoint is one long line of JSON that must not wrap or lose brackets.
            sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False, width=1 << 30))
            return
        kuberay = _kuberay(namespace, kubeconfig, context)
        created = kuberay.create_rayjob(manifest)
        job_name = created["metadata"]["name"]
        sys.stdout.write(job_name + "\n")
        code = _follow(kuberay, job_name, timeout) if watch else ExitCode.OK
    raise typer.Exit(code)


def _status_line(name: str, current: dict[str, Any]) -> str:
    return (f"{name}: {current.get('jobDeploymentStatus', '-')} / {current.get('jobStatus', '-')}"
            + (f"  {current['message']}" if current.get("message") else ""))


@k8s_app.command()
def status(name: str, namespace: NamespaceOpt = None,
           watch: Annotated[bool, typer.Option("--watch", "-w", help="follow it until it ends")] = False,
           output: OutputOpt = Output.TABLE,
           as_json: Annotated[bool, typer.Option("--json", help="the same as -o json")] = False,
           kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, timeout: TimeoutOpt = 3600.0) -> None:
    """Show a RayJob's status (with --watch, every change until it ends)."""
    with failing("--kubeconfig"):
        kuberay = _kuberay(namespace, kubeconfig, context)
        if watch:
            raise typer.Exit(_follow(kuberay, name, timeout))
        current = kuberay.get_rayjob(name).get("status") or {}
    emit(current, Output.JSON if as_json else output, lambda: _status_line(name, current))


@k8s_app.command("list")
def list_jobs(namespace: NamespaceOpt = None,
              all_jobs: Annotated[bool, typer.Option("--all", help="every RayJob, not only fabric's")] = False,
              output: OutputOpt = Output.TABLE,
              kubeconfig: KubeconfigOpt = None, context: ContextOpt = None) -> None:
    """List the RayJobs that fabric created in a namespace."""
    with failing("--kubeconfig"):
        jobs = _kuberay(namespace, kubeconfig, context).list_rayjobs(None if all_jobs else MANAGED_SELECTOR)
    jobs = sorted(jobs, key=lambda j: j["metadata"].get("creationTimestamp", ""))  # oldest first, like ls
    rows = [{"rayjob": job["metadata"]["name"],
             "pipeline": (job["metadata"].get("annotations") or {}).get("fabric.io/pipeline-id", "-"),
             "deployment": (job.get("status") or {}).get("jobDeploymentStatus", "-"),
             "job": (job.get("status") or {}).get("jobStatus", "-")} for job in jobs]
    emit(rows, output, lambda: _jobs_table(rows))


def _jobs_table(rows: list[dict[str, str]]) -> Any:
    from rich.table import Table

    table = Table(show_edge=False)
    for column in ("rayjob", "pipeline", "deployment", "job"):
        table.add_column(column, no_wrap=column in ("rayjob", "pipeline"))
    for row in rows:
        table.add_row(*row.values())
    return table


@k8s_app.command()
def delete(name: str, namespace: NamespaceOpt = None,
           kubeconfig: KubeconfigOpt = None, context: ContextOpt = None) -> None:
    """Delete a RayJob: KubeRay stops the job and removes its cluster."""
    with failing("--kubeconfig"):
        _kuberay(namespace, kubeconfig, context).delete_rayjob(name)
    out.print(f"deleted RayJob {name}")
