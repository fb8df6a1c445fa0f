"""Dispatch overhead: the same DAG shapes through fabric and through hand-written raw Ray, same run.

    python -m bench.dispatch [--repeats 3] [--store sqlite --store postgresql://user@host:port/db]
                             [--mode default --mode no-admission ...] [--shape chain]

Prints wall times, the fabric/raw ratio per shape, and the fabric's own overhead per node, for each store
(FABRIC_STORE: the embedded SQLite by default) and each mode: `default` (the settings' defaults: admission
on with the shipped scheduling config, chains fused, the lineage file on and outputs a downstream node reads
persisted),
`no-admission` (FABRIC_ADMISSION=0: eager dispatch), the default with lineage or persistence off
(`no-lineage`, `no-persistence`), and `no-fusion` (FABRIC_FUSE=0: one Ray task per chain member). Each mode gets
its own local cluster (the registry reads its settings when it starts) and its own raw-Ray figures, measured
in that cluster just before; a table of the ratios closes the run. `--shape` (repeatable) runs only those.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import ray

import fabric as fb
from bench import nodes
from fabric.settings import ENV

NOOP = "bench.nodes:noop"


def _node(node_id: str, entry: str = NOOP, ins: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "kind": "python_task", "entrypoint": entry, "outs": [node_id], "ins": ins or [], **extra}


def _spec(name: str, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    edges = [{"from": i.partition("=")[2] or i, "to": n["id"]} for n in nodes for i in n["ins"]]
    return {"version": 1, "pipeline_id": name, "nodes": nodes, "edges": edges}


# -- the shapes, as fabric specs --------------------------------------------------------------

def fan_spec(width: int = 1000) -> dict[str, Any]:
    middle = [_node(f"m{i}", ins=["src"]) for i in range(width)]
    return _spec("fan", [_node("src"), *middle, _node("sink", ins=[f"m{i}" for i in range(width)])])


def chain_spec(length: int = 200) -> dict[str, Any]:
    return _spec("chain", [_node("c0")] + [_node(f"c{i}", ins=[f"c{i - 1}"]) for i in range(1, length)])


def diamond_spec(layers: int = 10, width: int = 100) -> dict[str, Any]:
    nodes = [_node(f"l0_{j}") for j in range(width)]
    for layer in range(1, layers):
        for j in range(width):
            parents = sorted({f"l{layer - 1}_{j}", f"l{layer - 1}_{(j + 1) % width}"})
            nodes.append(_node(f"l{layer}_{j}", ins=parents))
    return _spec("diamond", nodes)


def table_spec(consumers: int = 8) -> dict[str, Any]:
    readers = [_node(f"r{i}", "bench.nodes:consume", ins=["table=t"]) for i in range(consumers)]
    return _spec("table", [_node("t", "bench.nodes:big_table"), *readers])


# -- the same shapes in raw Ray ----------------------------------------------------------------

noop_remote = ray.remote(nodes.noop)
table_remote = ray.remote(nodes.big_table)
consume_remote = ray.remote(nodes.consume)


def raw_fan(width: int = 1000) -> None:
    src = noop_remote.remote()
    middle = [noop_remote.remote(x=src) for _ in range(width)]
    ray.get(noop_remote.remote(**{f"m{i}": m for i, m in enumerate(middle)}))


def raw_chain(length: int = 200) -> None:
    ref = noop_remote.remote()
    for _ in range(1, length):
        ref = noop_remote.remote(x=ref)
    ray.get(ref)


def raw_diamond(layers: int = 10, width: int = 100) -> None:
    layer = [noop_remote.remote() for _ in range(width)]
    for _ in range(1, layers):
        layer = [noop_remote.remote(a=layer[j], b=layer[(j + 1) % width]) for j in range(width)]
    ray.get(layer)


def raw_table(consumers: int = 8) -> list[dict[str, Any]]:
    table = table_remote.remote()
    return ray.get([consume_remote.remote(table) for _ in range(consumers)])


# -- measurement -------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    fn()  # warm-up: worker processes start in waves of num_cpus
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


SUBMIT_TIMES: list[float] = []


def run_fabric(client: Any, spec: dict[str, Any]) -> Any:
    start = time.perf_counter()
    submission = client.submit(spec)
    SUBMIT_TIMES.append(time.perf_counter() - start)
    status = submission.wait(300)
    if status.state != "SUCCEEDED":
        raise SystemExit(f"{spec['pipeline_id']} ended {status.state}")
    return submission


def plasma_mib() -> float:
    """Object-store bytes in use on this node, as Ray reports it (no dashboard needed)."""
    from ray._private.internal_api import memory_summary

    text = memory_summary(stats_only=True)
    for line in text.splitlines():
        if "Plasma memory usage" in line:
            return float(line.split("Plasma memory usage")[1].split("MiB")[0])
    return float("nan")


SHAPES: dict[str, tuple[str, Callable[[], dict[str, Any]], Callable[[], Any], int]] = {
    "fan": ("(a) 1 -> 1000 -> 1", fan_spec, raw_fan, 1002),
    "chain": ("(b) chain of 200", chain_spec, raw_chain, 200),
    "diamond": ("(c) 10 x 100 diamond", diamond_spec, raw_diamond, 1000),
    "table": ("(d) 50 MB table x 8", table_spec, raw_table, 9),  # measured apart, below
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--store", action="append", default=None,
                        help="FABRIC_STORE for the registry: sqlite (default) or a postgresql:// URL; repeat to "
                             "compare (each database should be empty: the bench's submissions are added to it)")
    parser.add_argument("--mode", action="append", choices=tuple(MODES), default=None,
                        help="what to measure (default: every mode)")
    parser.add_argument("--shape", action="append", choices=SHAPES, default=None,
                        help="run only these shapes (default: all)")
    args = parser.parse_args()
    summary: dict[tuple[str, str], dict[str, float]] = {}
    for store in args.store or ["sqlite"]:
        for mode in args.mode or list(MODES):
            # Each mode gets its own local cluster: the registry reads the settings when it starts.
            os.environ[ENV["store"]] = store
            settings = {**DEFAULTS, **MODES[mode]}
            for key, value in settings.items():
                os.environ[ENV[key]] = value
            shown = store.split("@")[-1] if "://" in store else store  # no user (or password) in the output
            print(f"\n== {mode}: FABRIC_STORE={shown} " + " ".join(f"{ENV[k]}={v}" for k, v in settings.items()))
            summary[(shown, mode)] = measure(args)
            ray.shutdown()
    print("\n== fabric / raw Ray, per shape and mode (each against the raw Ray of its own cluster)")
    shapes = list(next(iter(summary.values())))
    print(f"{'store, mode':28} " + " ".join(f"{name:>22}" for name in shapes))
    for (store, mode), ratios in summary.items():
        print(f"{store + ', ' + mode:28} " + " ".join(f"{ratios[name]:22.2f}" for name in shapes))


DEFAULTS = {"admission": "1", "lineage": "file", "persist_outputs": "needed", "fuse": "1"}
MODES: dict[str, dict[str, str]] = {
    "default": {},
    "no-admission": {"admission": "0"},
    "no-lineage": {"lineage": "off"},
    "no-persistence": {"persist_outputs": "none"},
    "no-fusion": {"fuse": "0"},
}


def measure(args: argparse.Namespace) -> dict[str, float]:
    client = fb.connect("local", num_cpus=args.num_cpus, home=tempfile.mkdtemp(prefix="fabric-bench-"))

    wanted = args.shape or list(SHAPES)
    shapes = [(name, spec(), raw, count) for key, (name, spec, raw, count) in SHAPES.items()
              if key in wanted and key != "table"]
    print("fabric = submit (validate, plan, hand to the registry) + run + final status, end to end")
    print(f"{'shape':24} {'raw Ray':>9} {'fabric':>9} {'of which submit':>16} {'ratio':>6} {'overhead/node':>14}")
    ratios: dict[str, float] = {}
    for name, spec, raw, count in shapes:
        raw_s, _ = timed(raw, args.repeats)
        SUBMIT_TIMES.clear()
        fabric_s, _ = timed(lambda spec=spec: run_fabric(client, spec), args.repeats)
        submit_s = statistics.median(SUBMIT_TIMES[1:])
        per_node_ms = (fabric_s - raw_s) / count * 1000
        print(f"{name:24} {raw_s:8.3f}s {fabric_s:8.3f}s {submit_s:15.3f}s {fabric_s / raw_s:6.2f}"
              f" {per_node_ms:11.3f} ms", flush=True)
        ratios[name] = fabric_s / raw_s

    if "table" not in wanted:
        return ratios
    raw_s, raw_results = timed(raw_table, args.repeats)
    fabric_s, submission = timed(lambda: run_fabric(client, table_spec()), args.repeats)
    results = [submission.result(f"r{i}") for i in range(8)]
    print(f"{'(d) 50 MB table x 8':24} {raw_s:8.3f}s {fabric_s:8.3f}s {'':>16} {fabric_s / raw_s:6.2f}")
    ratios["(d) 50 MB table x 8"] = fabric_s / raw_s
    raw_added, fabric_added = table_footprint(client)
    print(f"    zero-copy reads: raw {sum(r['zero_copy'] for r in raw_results)}/8, "
          f"fabric {sum(r['zero_copy'] for r in results)}/8; object store added by one run while its "
          f"table is held: raw {raw_added:.0f} MiB, fabric {fabric_added:.0f} MiB", flush=True)
    return ratios


def table_footprint(client: Any) -> tuple[float, float]:
    """Object-store MiB that one run adds while its table is still referenced, raw Ray vs fabric."""
    time.sleep(1)
    base = plasma_mib()
    table = table_remote.remote()
    ray.get([consume_remote.remote(table) for _ in range(8)])
    time.sleep(1)
    raw_added = plasma_mib() - base
    del table
    time.sleep(2)
    base = plasma_mib()
    run_fabric(client, table_spec())
    time.sleep(1)
    return raw_added, plasma_mib() - base


if __name__ == "__main__":
    main()
