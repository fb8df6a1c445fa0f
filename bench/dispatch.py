"""Dispatch overhead: the same DAG shapes through fabric and through hand-written raw Ray, same run.

    python -m bench.dispatch [--repeats 3] [--store sqlite --store postgresql://user@host:port/db]
                             [--persist needed] [--shape chain] [--fuse on --fuse off]

Prints wall times, the fabric/raw ratio per shape, and the fabric's own overhead per node, for each store
(FABRIC_STORE: the embedded SQLite by default), each output-persistence mode and each chain-fusion setting
(FABRIC_FUSE; on by default). `--shape` (repeatable) runs only those shapes.
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
    parser.add_argument("--persist", action="append", choices=("none", "needed"), default=None,
                        help="FABRIC_PERSIST_OUTPUTS mode(s) to measure (default: both)")
    parser.add_argument("--shape", action="append", choices=SHAPES, default=None,
                        help="run only these shapes (default: all)")
    parser.add_argument("--fuse", action="append", choices=("on", "off"), default=None,
                        help="FABRIC_FUSE setting(s) to measure (default: on)")
    args = parser.parse_args()
    for store in args.store or ["sqlite"]:
        for persist in args.persist or ["none", "needed"]:
            for fuse in args.fuse or ["on"]:
                # Each mode gets its own local cluster: the registry reads the settings when it starts.
                os.environ[ENV["store"]] = store
                os.environ[ENV["persist_outputs"]] = persist
                os.environ[ENV["fuse"]] = "1" if fuse == "on" else "0"
                shown = store.split("@")[-1] if "://" in store else store  # no user (or password) in the output
                print(f"\n== FABRIC_STORE={shown} FABRIC_PERSIST_OUTPUTS={persist} FABRIC_FUSE={fuse}"
                      + (" (default: outputs a downstream node reads are written to the artifact store)"
                         if persist == "needed" else " (no output persistence: a resumed run recomputes)"))
                measure(args)
                ray.shutdown()


def measure(args: argparse.Namespace) -> None:
    client = fb.connect("local", num_cpus=args.num_cpus, home=tempfile.mkdtemp(prefix="fabric-bench-"))

    wanted = args.shape or list(SHAPES)
    shapes = [(name, spec(), raw, count) for key, (name, spec, raw, count) in SHAPES.items()
              if key in wanted and key != "table"]
    print("fabric = submit (validate, plan, hand to the registry) + run + final status, end to end")
    print(f"{'shape':24} {'raw Ray':>9} {'fabric':>9} {'of which submit':>16} {'ratio':>6} {'overhead/node':>14}")
    for name, spec, raw, count in shapes:
        raw_s, _ = timed(raw, args.repeats)
        SUBMIT_TIMES.clear()
        fabric_s, _ = timed(lambda spec=spec: run_fabric(client, spec), args.repeats)
        submit_s = statistics.median(SUBMIT_TIMES[1:])
        per_node_ms = (fabric_s - raw_s) / count * 1000
        print(f"{name:24} {raw_s:8.3f}s {fabric_s:8.3f}s {submit_s:15.3f}s {fabric_s / raw_s:6.2f}"
              f" {per_node_ms:11.3f} ms")

    if "table" not in wanted:
        return
    raw_s, raw_results = timed(raw_table, args.repeats)
    fabric_s, submission = timed(lambda: run_fabric(client, table_spec()), args.repeats)
    results = [submission.result(f"r{i}") for i in range(8)]
    print(f"{'(d) 50 MB table x 8':24} {raw_s:8.3f}s {fabric_s:8.3f}s {'':>16} {fabric_s / raw_s:6.2f}")
    raw_added, fabric_added = table_footprint(client)
    print(f"    zero-copy reads: raw {sum(r['zero_copy'] for r in raw_results)}/8, "
          f"fabric {sum(r['zero_copy'] for r in results)}/8; object store added by one run while its "
          f"table is held: raw {raw_added:.0f} MiB, fabric {fabric_added:.0f} MiB")


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
