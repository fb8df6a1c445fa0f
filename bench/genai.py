"""llm_generate overhead: the same tiny causal LM over the same prompts through the fabric and through a plain
Ray Data script, in one run on one local Ray.

    python -m bench.genai [--prompts 2000] [--workers 2] [--batch-size 32] [--max-new-tokens 8] [--repeats 1]

The prompts are all distinct (no merging helps the fabric). The anchor is what a user would write: a callable
class that loads the model with transformers and generates a batch, `map_batches` over an actor pool of the same
size, the rows collected. The fabric side is a two-node DAG (prompts -> llm_generate) submitted and waited for.
After one warm-up each, runs alternate, each from an idle cluster (every CPU free, then IDLE_S seconds);
the medians and their ratio (fabric / anchor) are printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

import fabric as fb
from jobs.genai.tiny import WORDS, causal_lm


def prompts(n: int) -> Any:
    import pyarrow as pa

    return pa.table({"prompt": [f"{WORDS[i % len(WORDS)]} {WORDS[(i // len(WORDS)) % len(WORDS)]} {i}"
                                for i in range(n)]})


class Plain:
    """The anchor's model replica."""

    def __init__(self, path: str, max_new_tokens: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.max_new_tokens = max_new_tokens

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        encoded = self.tokenizer(batch.column("prompt").to_pylist(), return_tensors="pt", padding=True)
        with self.torch.inference_mode():
            out = self.model.generate(**encoded, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        return batch.append_column("completion", pa.array(texts, pa.string()))


def run_anchor(args: argparse.Namespace, path: str) -> float:
    import pyarrow as pa
    import ray.data

    started = time.perf_counter()
    table = prompts(args.prompts)
    step = -(-table.num_rows // (args.workers * 4))
    dataset = ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])
    dataset = dataset.map_batches(Plain, fn_constructor_kwargs={"path": path, "max_new_tokens": args.max_new_tokens},
                                  batch_size=args.batch_size, batch_format="pyarrow", concurrency=args.workers,
                                  num_cpus=args.cpu)
    out = pa.concat_tables(ray.get(dataset.to_arrow_refs()))
    assert out.num_rows == args.prompts
    return time.perf_counter() - started


def run_fabric(args: argparse.Namespace, client: Any, path: str) -> float:
    spec = {"version": 1, "pipeline_id": "bench_genai", "nodes": [
        {"id": "prompts", "kind": "python_task", "entrypoint": "bench.genai:prompts", "params": {"n": args.prompts},
         "outs": ["prompts"], "resources": {"cpu": "100m"}},
        {"id": "gen", "kind": "llm_generate", "ins": ["prompts"], "outs": ["completions"],
         "resources": {"cpu": str(args.cpu), "workers": args.workers},
         "params": {"model": path, "batch_size": args.batch_size, "dedup": False,
                    "sampling": {"max_new_tokens": args.max_new_tokens}}}],
        "edges": [{"from": "prompts", "to": "gen"}]}
    started = time.perf_counter()
    status = client.submit(spec).wait(1800)
    elapsed = time.perf_counter() - started
    assert status.state == "SUCCEEDED", status.node("gen").error
    return elapsed


IDLE_S = 3.0  # then this long idle: Ray refills its pool of idle worker processes, which new replicas start in


def settle(timeout: float = 60.0) -> None:
    """Until every CPU of the cluster is free again, then IDLE_S more: the replicas of the run before have gone and
    Ray has started the idle workers the next pool takes, so neither side starts while the other's pool is still
    torn down or replaced (the side that returns first would otherwise hand that cost to the side after it)."""
    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(IDLE_S)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpu", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="fabric-bench-genai-"))
    path = str(causal_lm(home / "lm"))
    client = fb.connect("local", num_cpus=args.num_cpus, home=str(home / "fabric"))
    run_anchor(args, path)  # warm-up: worker processes, imports
    run_fabric(args, client, path)
    anchor, fabric = [], []
    for _ in range(args.repeats):
        settle()
        anchor.append(run_anchor(args, path))
        settle()
        fabric.append(run_fabric(args, client, path))
    a, f = statistics.median(anchor), statistics.median(fabric)
    print(f"llm_generate over {args.prompts} prompts, {args.workers} replicas, batch {args.batch_size}, "
          f"{args.max_new_tokens} new tokens: anchor {a:.2f} s, fabric {f:.2f} s, ratio {f / a:.2f} "
          f"(anchor runs {[round(x, 2) for x in anchor]}, fabric runs {[round(x, 2) for x in fabric]})")
    ray.shutdown()


if __name__ == "__main__":
    main()
