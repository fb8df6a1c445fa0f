"""What a GPU node sees, for scripts/gpu_check.sh: the GPU ids Ray gave it, CUDA_VISIBLE_DEVICES, torch's device,
and when it held the GPU while generating with the tiny LM on it."""

from __future__ import annotations

import os
import time
from typing import Any


def probe(model: str, hold_s: float = 3.0, max_new_tokens: int = 16) -> dict[str, Any]:
    """Generate on the node's GPU (CPU if torch sees none) for at least `hold_s` seconds, and say where it ran."""
    import ray
    import torch

    from fabric.ml.genai.generate import Generator

    started = time.time()
    generator = Generator(model, {"max_new_tokens": max_new_tokens}, num_gpus=1.0)
    made = 0
    while time.time() - started < hold_s or not made:
        made += len(generator.generate(["alpha beta", "price trade"]))
    memory = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    return {"ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": str(generator.device),
            "torch_device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cuda_memory_allocated": memory, "generations": made, "start": started, "end": time.time(),
            "pid": os.getpid()}
