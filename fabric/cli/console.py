"""The CLI's one rich console (`out`, `err`) and what it renders: status tables, results, error reports."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from fabric.errors import FabricError
from fabric.record import NodeStatus, SubmissionStatus
from fabric.states import NodeState, SubmissionState

STATE_STYLE = {
    NodeState.PENDING: "dim", NodeState.QUEUED: "cyan", NodeState.RUNNING: "bold blue",
    NodeState.RETRYING: "yellow", NodeState.SUCCEEDED: "green", NodeState.CACHED: "green",
    NodeState.FAILED: "bold red", NodeState.TIMED_OUT: "red", NodeState.SKIPPED: "magenta",
    NodeState.CANCELLED: "magenta",
}
SUBMISSION_STYLE = {SubmissionState.RUNNING: "bold blue", SubmissionState.SUCCEEDED: "bold green"}
MAX_ROWS = 40

out = Console()
err = Console(stderr=True)


def _elapsed(node: NodeStatus, now: float) -> str:
    if node.started_at is None:
        return ""
    end = node.ended_at or now
    return f"{end - node.started_at:.1f}s"


def _bar(fraction: float, width: int = 12) -> str:
    filled = round(fraction * width)
    return "█" * filled + "·" * (width - filled) + f" {fraction * 100:3.0f}%"


def status_table(status: SubmissionStatus, now: float | None = None) -> Group:
    """Per-node table; big DAGs show the nodes that matter (running, failed) and counts for the rest."""
    now = now or time.time()
    style = SUBMISSION_STYLE.get(status.state, "bold red")
    counts = "  ".join(f"{k.lower()} {v}" for k, v in sorted(status.counts.items()))
    header = Text.assemble((f"{status.pipeline_id} ", "bold"), (status.submission_id, "dim"), "  ",
                           (str(status.state), style), f"  {counts}")
    table = Table(show_edge=False, pad_edge=False, expand=False)
    for column in ("node", "kind", "state", "attempt", "progress", "time", "detail"):
        table.add_column(column, no_wrap=column != "detail", overflow="fold")
    nodes = list(status.nodes)
    if len(nodes) > MAX_ROWS:
        order = [NodeState.FAILED, NodeState.TIMED_OUT, NodeState.RUNNING, NodeState.RETRYING]
        nodes = sorted(nodes, key=lambda n: order.index(n.state) if n.state in order else len(order))[:MAX_ROWS]
    for node in nodes:
        detail = node.message or node.reason
        if node.error is not None:
            detail = f"{node.error.type}: {node.error.message}"
        table.add_row(node.node_id, node.kind, Text(str(node.state), STATE_STYLE[node.state]),
                      str(node.attempts or ""), _bar(node.progress) if node.state is NodeState.RUNNING else "",
                      _elapsed(node, now), detail[:120])
    if len(status.nodes) > MAX_ROWS:
        table.caption = f"{len(status.nodes) - MAX_ROWS} more nodes not shown"
    return Group(header, table)


def describe_value(value: Any, limit: int = 600) -> str:
    """A short, readable view of a node output."""
    try:
        import pyarrow as pa

        if isinstance(value, pa.Table):
            import polars as pl

            return f"Arrow table {value.num_rows} rows × {value.num_columns} columns\n{pl.from_arrow(value).head(5)}"
    except ImportError:
        pass
    if isinstance(value, dict | list):
        try:
            text = json.dumps(value, indent=2, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"


def metrics_table(metrics: dict[str, Any]) -> Table:
    table = Table(title="metrics", show_edge=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


def error_text(error: FabricError) -> Text:
    text = Text()
    text.append(f"error [{error.code}] ", "bold red")
    text.append(error.message)
    if error.where:
        text.append(f"  (at {error.where})", "dim")
    for problem in error.problems:
        text.append(f"\n  • [{problem.code}] {problem.where}: ", "yellow")
        text.append(problem.message)
        if problem.fix:
            text.append(f"\n      fix: {problem.fix}", "dim")
    if error.fix:
        text.append(f"\n  fix: {error.fix}", "dim")
    return text


def submissions_table(items: list[dict[str, Any]]) -> Table:
    """`fabric ls`: one row per submission, newest first as the registry answers."""
    table = Table(show_edge=False)
    table.add_column("submission", no_wrap=True, min_width=26)
    for column in ("pipeline", "state", "created"):
        table.add_column(column)
    for item in items:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["created_at"]))
        table.add_row(item["submission_id"], item["pipeline_id"], item["state"], created)
    return table
