"""A map over 10,000 no-op items against a hand-written raw-Ray loop of 10,000 `.remote` calls, same cluster, same run.

    python -m bench.map [--items 10000] [--batch-size 100] [--repeats 1] [--num-cpus 2]

The fabric side is end to end (`client.submit(spec).wait()`): the item list made by an upstream node, the map's
count and split tasks, every child recorded with its own transitions, the gather, and a reader of the 10,000
results. It runs twice: one child per item, and one child per batch of `--batch-size` items (each child runs the
function once per item of its batch, in one Ray task). The raw side submits one `.remote` per item and gets them.
Prints each wall time and the fabric / raw ratio (target <= 1.5)."""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import ray

import fabric as fb
from bench.dispatch import timed
from bench.nodes import noop_item


def map_spec(items: int, batch_size: int | None) -> dict[str, Any]:
    fan: dict[str, Any] = {"over": "item"}
    if batch_size:
        fan["batch_size"] = batch_size
    return {"version": 1, "pipeline_id": f"map_{items}_{batch_size or 1}", "nodes": [
        {"id": "items", "kind": "python_task", "entrypoint": "bench.nodes:items", "params": {"n": items},
         "outs": ["xs"]},
        {"id": "each", "kind": "python_task", "entrypoint": "bench.nodes:noop_item", "ins": ["item=xs"],
         "outs": ["results"], "map": fan},
        {"id": "count", "kind": "python_task", "entrypoint": "bench.nodes:count", "ins": ["results"]}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    client = fb.connect("local", num_cpus=args.num_cpus, home=tempfile.mkdtemp(prefix="fabric-bench-map-"))
    noop_remote = ray.remote(noop_item).options(num_cpus=1)

    def raw() -> None:
        ray.get([noop_remote.remote(i) for i in range(args.items)])

    def fabric(batch_size: int | None) -> None:
        submission = client.submit(map_spec(args.items, batch_size))
        status = submission.wait(900)
        if status.state != "SUCCEEDED" or submission.result("count") != args.items:
            raise SystemExit(f"the map ended {status.state}")

    raw_s, _ = timed(raw, args.repeats)
    print(f"raw Ray, {args.items} x .remote: {raw_s:8.3f}s", flush=True)
    for batch_size in (None, args.batch_size):
        fabric_s, _ = timed(lambda b=batch_size: fabric(b), args.repeats)
        shape = "one child per item" if batch_size is None else f"batch_size {batch_size}"
        print(f"fabric map, {shape:>20}: {fabric_s:8.3f}s  ratio {fabric_s / raw_s:5.2f}  (target <= 1.5)",
              flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
