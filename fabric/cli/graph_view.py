"""A submission's DAG drawn without a browser: layered layout, a terminal table, and hand-written SVG (or PNG).

Input is the registry's graph view (`Submission.graph()`: nodes, upstream, attempts, critical path) and the
status. The layout is the web UI's: layers by longest path from a source, ordered by the parents' mean row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

COLORS = {"PENDING": "#9ca3af", "QUEUED": "#60a5fa", "RUNNING": "#2563eb", "RETRYING": "#f59e0b",
          "SUCCEEDED": "#16a34a", "CACHED": "#15803d", "FAILED": "#dc2626", "TIMED_OUT": "#b91c1c",
          "SKIPPED": "#d1d5db", "CANCELLED": "#6b7280"}
RICH = {"SUCCEEDED": "green", "CACHED": "green", "FAILED": "red", "TIMED_OUT": "red", "RUNNING": "blue",
        "QUEUED": "cyan", "RETRYING": "yellow", "CANCELLED": "dim", "SKIPPED": "dim", "PENDING": "dim"}
BOX_W, BOX_H, GAP_X, GAP_Y = 170, 40, 60, 22


def layers(nodes: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Nodes (in topological order) grouped by longest path from a source, each layer ordered to keep
    edges short (one barycenter pass)."""
    depth: dict[str, int] = {}
    for node in nodes:
        depth[node["id"]] = max((depth[u] for u in node["upstream"]), default=-1) + 1
    result: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in nodes:
        result[depth[node["id"]]].append(node["id"])
    upstream = {n["id"]: n["upstream"] for n in nodes}
    row: dict[str, float] = {}
    for index, layer in enumerate(result):
        if index:
            layer.sort(key=lambda n: sum(row[u] for u in upstream[n]) / max(len(upstream[n]), 1))
        row.update({n: float(i) for i, n in enumerate(layer)})
    return result


def positions(nodes: Sequence[Mapping[str, Any]]) -> dict[str, tuple[float, float]]:
    """Top-left corner of each node's box, in SVG pixels."""
    return {n: (10 + x * (BOX_W + GAP_X), 10 + y * (BOX_H + GAP_Y))
            for x, layer in enumerate(layers(nodes)) for y, n in enumerate(layer)}


def node_states(status: Mapping[str, Any] | None) -> dict[str, str]:
    return {n["node_id"]: n["state"] for n in (status or {}).get("nodes", [])}


def svg(graph: Mapping[str, Any], status: Mapping[str, Any] | None = None) -> str:
    """The DAG as a standalone SVG document: boxes coloured by state, the critical path in gold."""
    nodes, states = graph["nodes"], node_states(status)
    where = positions(nodes)
    hot = set(graph.get("critical_path", []))
    width = max((x for x, _ in where.values()), default=0) + BOX_W + 20
    height = max((y for _, y in where.values()), default=0) + BOX_H + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>']
    for node in nodes:
        x2, y2 = where[node["id"]]
        for up in node["upstream"]:
            x1, y1 = where[up]
            gold = up in hot and node["id"] in hot
            a, b, c = x1 + BOX_W, y1 + BOX_H / 2, y2 + BOX_H / 2
            parts.append(f'<path d="M{a:.0f},{b:.0f} C{a + GAP_X / 2:.0f},{b:.0f} {x2 - GAP_X / 2:.0f},{c:.0f} '
                         f'{x2:.0f},{c:.0f}" fill="none" stroke="{"#d4a017" if gold else "#9ca3af"}" '
                         f'stroke-width="{3 if gold else 1.5}"/>')
    for node in nodes:
        x, y = where[node["id"]]
        state = states.get(node["id"], "PENDING")
        edge = ('stroke="#d4a017" stroke-width="3"' if node["id"] in hot else 'stroke="#374151" stroke-width="1"')
        label = node["id"] if len(node["id"]) <= 22 else node["id"][:21] + "…"
        parts.append(f'<g data-node="{escape(node["id"])}"><title>{escape(node["id"])} ({state})</title>'
                     f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="6" '
                     f'fill="{COLORS.get(state, "#9ca3af")}" {edge}/>'
                     f'<text x="{x + 8:.0f}" y="{y + 16:.0f}" fill="#fff" font-weight="bold">{escape(label)}</text>'
                     f'<text x="{x + 8:.0f}" y="{y + 32:.0f}" fill="#fff">{escape(node["kind"])} · '
                     f'{state.lower()}</text></g>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def png(graph: Mapping[str, Any], status: Mapping[str, Any] | None, path: str) -> None:
    """The same picture as a PNG, drawn with matplotlib (needs the `dev` extra, or `pip install matplotlib`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    nodes, states, hot = graph["nodes"], node_states(status), set(graph.get("critical_path", []))
    where = positions(nodes)
    width = max((x for x, _ in where.values()), default=0) + BOX_W + 20
    height = max((y for _, y in where.values()), default=0) + BOX_H + 20
    fig, ax = plt.subplots(figsize=(width / 80, height / 80), dpi=100)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    for node in nodes:
        x2, y2 = where[node["id"]]
        for up in node["upstream"]:
            x1, y1 = where[up]
            gold = up in hot and node["id"] in hot
            ax.plot([x1 + BOX_W, x2], [y1 + BOX_H / 2, y2 + BOX_H / 2], color="#d4a017" if gold else "#9ca3af",
                    linewidth=2.5 if gold else 1.2, zorder=1)
    for node in nodes:
        x, y = where[node["id"]]
        state = states.get(node["id"], "PENDING")
        ax.add_patch(FancyBboxPatch((x, y), BOX_W, BOX_H, boxstyle="round,pad=0,rounding_size=6",
                                    facecolor=COLORS.get(state, "#9ca3af"), zorder=2,
                                    edgecolor="#d4a017" if node["id"] in hot else "#374151",
                                    linewidth=2.5 if node["id"] in hot else 0.8))
        ax.text(x + 8, y + 15, node["id"][:22], color="white", fontsize=8, fontweight="bold", zorder=3)
        ax.text(x + 8, y + 31, f"{node['kind']} · {state.lower()}", color="white", fontsize=7, zorder=3)
    fig.savefig(path, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def table(graph: Mapping[str, Any], status: Mapping[str, Any] | None = None) -> Any:
    """The DAG as a rich Table for the terminal: layer by layer, each node's upstream nodes, state,
    attempts, queue wait and run time; ★ marks the critical path."""
    from rich.table import Table

    states, hot = node_states(status), set(graph.get("critical_path", []))
    by_id = {n["id"]: n for n in graph["nodes"]}
    view = Table(show_edge=False, title=f"{graph['pipeline_id']} · {graph['submission_id']}"
                 + (f" · {status['state']}" if status else ""), caption="★ critical path", title_justify="left")
    for column in ("layer", "node", "kind", "state", "tries", "waited", "ran", "after"):
        # The node's name never wraps; in a narrow terminal the kind gives way first.
        view.add_column(column, justify="right" if column in ("layer", "tries", "waited", "ran") else "left",
                        no_wrap=column in ("node", "state"), max_width=11 if column == "kind" else None,
                        overflow="ellipsis" if column == "kind" else "fold")
    for depth, layer in enumerate(layers(graph["nodes"])):
        for node_id in layer:
            attempts = graph.get("attempts", {}).get(node_id, [])
            waited = sum((a["started_at"] - a["queued_at"]) for a in attempts
                         if a["queued_at"] is not None and a["started_at"] is not None)
            ran = sum((a["ended_at"] - a["started_at"]) for a in attempts
                      if a["ended_at"] is not None and a["started_at"] is not None)
            state = states.get(node_id, "PENDING")
            upstream = by_id[node_id]["upstream"]
            view.add_row(str(depth), ("★ " if node_id in hot else "  ") + node_id, by_id[node_id]["kind"],
                         f"[{RICH.get(state, 'white')}]{state}[/]", str(len(attempts)),
                         f"{waited:.2f}s" if attempts else "", f"{ran:.2f}s" if attempts else "",
                         ("← " + ", ".join(upstream)) if upstream else "")
    return view
