#!/usr/bin/env bash
# The GPU paths of the genai kinds, on a machine with a GPU (issue 19, item 7). Not part of scripts/test.sh.
# It needs only what the genai extra installs (bash scripts/setup.sh genai) and prints what it saw:
#   1. llm_generate on one GPU (resources: {gpu: 1}): the node's metrics (device) and a probe of the GPU it got;
#   2. finetune (SFT, 2 workers of gpu: 1) when 2 GPUs exist and the finetune kind is here (else skipped, saying why);
#   3. fractional packing: two inference nodes of gpu: 0.5 at once, on the same GPU, their hold times overlapping.
# It starts its own local Ray (and stops it), with FABRIC_HOME in a temp dir; the tiny models are built there.
#   bash scripts/gpu_check.sh            # exit 0: every check that could run passed; 1: one failed
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d -t fabric-gpu-check-XXXXXX)"
export FABRIC_HOME="$WORK/home" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
trap 'rm -rf "$WORK"' EXIT
exec "$PY" - "$WORK" <<'PYEOF'
import json
import sys
import time
from pathlib import Path

work = Path(sys.argv[1])
try:
    import torch
except ImportError:
    sys.exit("gpu_check: torch is not installed: bash scripts/setup.sh genai")
gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {gpus} GPU(s) visible")
for i in range(gpus):
    print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
if not gpus:
    print("gpu_check: no GPU here: nothing to check (the CPU paths are in scripts/test.sh)")
    sys.exit(0)

import fabric as fb
from fabric.kinds import available_kinds
from jobs.genai.tiny import causal_lm

lm = str(causal_lm(work / "lm"))
client = fb.connect("local", num_cpus=4, num_gpus=gpus, home=str(work / "home"))
failed = []


def run(spec, what, timeout=600):
    started = time.monotonic()
    submission = client.submit(spec)
    status = submission.wait(timeout=timeout)
    print(f"\n== {what}: {status.state} in {time.monotonic() - started:.1f}s")
    for node in status.nodes:
        print(f"  {node.node_id:10} {node.state} attempts={node.attempts}"
              + (f" error={node.error.message}" if node.error is not None else ""))
    if status.state != "SUCCEEDED":
        failed.append(what)
    return submission, status


def metrics(submission, node):
    try:
        return json.loads(client.artifact(submission.id, node, "metrics.json"))
    except Exception as exc:  # noqa: BLE001 - printed, not fatal
        return {"unreadable": repr(exc)}


# 1. llm_generate on one GPU
spec = {"version": 1, "pipeline_id": "gpu_llm_generate", "nodes": [
    {"id": "prompts", "kind": "python_task", "entrypoint": "jobs.genai.data:prompts", "outs": ["prompts"],
     "params": {"n": 64, "distinct": 16}},
    {"id": "generate", "kind": "llm_generate", "ins": ["prompts"], "outs": ["completions"],
     "resources": {"cpu": 1, "gpu": 1}, "params": {"model": lm, "batch_size": 16,
                                                   "sampling": {"max_new_tokens": 16}}},
    {"id": "probe", "kind": "python_task", "entrypoint": "jobs.genai.gpu:probe", "outs": ["seen"],
     "resources": {"cpu": 1, "gpu": 1}, "params": {"model": lm, "hold_s": 1.0}}],
    "edges": [{"from": "prompts", "to": "generate"}]}
submission, status = run(spec, "llm_generate on one GPU")
if status.state == "SUCCEEDED":
    m = metrics(submission, "generate")
    seen = submission.result("probe")
    print(f"  llm_generate metrics: device={m.get('device')} prompts={m.get('prompts')} "
          f"generations={m.get('generations')} merged={m.get('merged')}")
    print(f"  a gpu: 1 node saw: {json.dumps(seen)}")
    if m.get("device") != "gpu" or seen["device"] != "cuda":
        failed.append("llm_generate did not run on CUDA")

# 2. finetune (SFT) with 2 GPU workers, when 2 GPUs exist and the kind is in this build
if "finetune" not in available_kinds():
    print("\n== finetune: skipped: the finetune kind is not installed in this build")
elif gpus < 2:
    print(f"\n== finetune: skipped: it needs 2 GPUs, {gpus} here")
else:
    spec = {"version": 1, "pipeline_id": "gpu_finetune", "nodes": [
        {"id": "pairs", "kind": "python_task", "entrypoint": "jobs.genai.data:sft_pairs", "outs": ["pairs"]},
        {"id": "tune", "kind": "finetune", "ins": ["pairs"], "outs": ["model_uri", "metrics_json"],
         "resources": {"cpu": 1, "gpu": 1, "workers": 2},
         "params": {"model": lm, "method": "sft", "epochs": 1, "batch_size": 4, "max_length": 64}}],
        "edges": [{"from": "pairs", "to": "tune"}]}
    submission, status = run(spec, "finetune (sft) with 2 GPU workers", timeout=1200)
    print(f"  tune metrics: {json.dumps(metrics(submission, 'tune'))[:800]}")

# 3. two 0.5-GPU inference nodes, packed on one GPU at once
probe = {"kind": "python_task", "entrypoint": "jobs.genai.gpu:probe", "resources": {"cpu": 0.5, "gpu": 0.5},
         "params": {"model": lm, "hold_s": 8.0}}
spec = {"version": 1, "pipeline_id": "gpu_packing", "nodes": [
    {**probe, "id": "infer_a", "outs": ["a"]}, {**probe, "id": "infer_b", "outs": ["b"]}]}
submission, status = run(spec, "two inference nodes of gpu: 0.5")
if status.state == "SUCCEEDED":
    a, b = submission.result("infer_a"), submission.result("infer_b")
    overlap = min(a["end"], b["end"]) - max(a["start"], b["start"])
    for name, seen in (("infer_a", a), ("infer_b", b)):
        print(f"  {name}: ray gpu ids {seen['ray_gpu_ids']}, CUDA_VISIBLE_DEVICES={seen['cuda_visible_devices']}, "
              f"device {seen['device']}, pid {seen['pid']}, held {seen['end'] - seen['start']:.1f}s")
    print(f"  same GPU: {a['ray_gpu_ids'] == b['ray_gpu_ids']}; overlapping for {max(overlap, 0):.1f}s")
    if a["ray_gpu_ids"] != b["ray_gpu_ids"] or overlap <= 0:
        print("  (not packed: with more than one GPU Ray may spread them; with one GPU they must share it)")
        if gpus == 1:
            failed.append("0.5-GPU nodes were not packed on the one GPU")

print(f"\ngpu_check: {'FAILED: ' + '; '.join(failed) if failed else 'every check that ran passed'}")
import ray

ray.shutdown()
sys.exit(1 if failed else 0)
PYEOF
