"""Node functions the engine tests run as python_task entrypoints (`tests.nodes:...`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from fabric.context import context


def _mark(marker_dir: str, name: str) -> int:
    """Record one execution with a side-effect file; returns how many executions so far."""
    path = Path(marker_dir)
    path.mkdir(parents=True, exist_ok=True)
    count = len(list(path.glob(f"{name}.*"))) + 1
    (path / f"{name}.{count}").write_text(str(time.time()))
    return count


def flaky(marker_dir: str, failures: int) -> str:
    count = _mark(marker_dir, "flaky")
    print(f"flaky attempt {count}")
    if count <= failures:
        raise RuntimeError(f"planned failure {count} of {failures}")
    return f"ok after {count}"


def sleeper(seconds: float, marker_dir: str = "") -> str:
    if marker_dir:
        _mark(marker_dir, "sleeper-start")
    time.sleep(seconds)
    if marker_dir:
        _mark(marker_dir, "sleeper-end")
    return "slept"


def value(x: float = 1.0) -> float:
    return x


def add(a: float, b: float) -> float:
    return a + b


def total(**parts: float) -> float:
    return sum(parts.values())


def boom(message: str = "boom") -> None:
    print("about to fail")
    context().logger.info("logger line before failing")
    raise ValueError(message)


def make_table(rows: int = 1000) -> pa.Table:
    return pa.table({"x": list(range(rows)), "y": [float(i) * 2 for i in range(rows)]})


def table_sum(table: pa.Table) -> float:
    return float(pc.sum(table["y"]).as_py())


def split(x: float) -> dict[str, float]:
    return {"low": x - 1, "high": x + 1}


def read_env(name: str) -> str:
    return os.environ.get(name, "")


def slow_progress(steps: int = 10, pause: float = 0.3) -> int:
    ctx = context()
    (ctx.artifact_dir / "note.txt").write_text("written by the node")
    for step in range(steps):
        ctx.progress((step + 1) / steps, f"step {step + 1}/{steps}")
        ctx.logger.info("step %d", step + 1)
        time.sleep(pause)
    return steps


def wrong_outs() -> dict[str, int]:
    return {"a": 1}


def noop(**_: object) -> None:
    return None


def ticker(seconds: float, marker_dir: str) -> str:
    """Appends a tick every 0.1 s, so a test can see whether it still runs."""
    path = Path(marker_dir) / "ticks"
    path.parent.mkdir(parents=True, exist_ok=True)
    end = time.time() + seconds
    while time.time() < end:
        with path.open("a") as ticks:
            ticks.write(".")
        time.sleep(0.1)
    return "done"


def crash_once(marker_dir: str) -> str:
    """SIGKILLs its own worker on the first attempt: a crash, not an exception."""
    import signal

    if _mark(marker_dir, "crash") == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def counted(marker_dir: str, name: str, seconds: float = 0.0, **inputs: object) -> str:
    """Records each execution, optionally sleeps, returns a value naming what it consumed."""
    _mark(marker_dir, name)
    time.sleep(seconds)
    return f"{name}({','.join(sorted(str(v) for v in inputs.values()))})"


def checkpointing_sleeper(seconds: float, marker_dir: str) -> str:
    """Sleeps; when interrupted (preempted), writes a checkpoint marker first through on_preempt. An attempt
    that finds a checkpoint resumes from it: it has a second left to do."""
    ctx = context()
    attempt = _mark(marker_dir, "start")
    ctx.on_preempt(lambda: _mark(marker_dir, "checkpoint"))
    time.sleep(1.0 if list(Path(marker_dir).glob("checkpoint.*")) else seconds)
    return f"done on start {attempt}"


def gpu_probe(seconds: float = 0.0) -> str:
    """Where Ray ran it: `<ray node id>/<CUDA_VISIBLE_DEVICES>` (fake GPUs set it too)."""
    import ray

    time.sleep(seconds)
    return f"{ray.get_runtime_context().get_node_id()}/{os.environ.get('CUDA_VISIBLE_DEVICES', '')}"


def which_device(seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return context().device


def group_probe() -> dict:
    """The placement group this node runs in: its strategy and the Ray node of each bundle."""
    import ray
    from ray.util import get_current_placement_group
    from ray.util.placement_group import placement_group_table

    group = get_current_placement_group()
    if group is None:
        return {}
    table = placement_group_table(group)
    return {"strategy": table["strategy"], "nodes": list(table["bundles_to_node_id"].values()),
            "id": group.id.hex(), "here": ray.get_runtime_context().get_node_id()}


def chatty(lines: int = 2000, hold_s: float = 3.0, release: str = "") -> pa.Table:
    """Writes node files, a log well over 64 KiB (half of it from a child process, through fd 1), holds
    an early line visible while it waits (until `release` exists, or `hold_s`), returns a table."""
    import json
    import subprocess

    ctx = context()
    print("early line from python", flush=True)
    subprocess.run(["sh", "-c", "echo early line from a child process"], check=True)
    end = time.time() + hold_s
    while time.time() < end and not (release and Path(release).exists()):
        time.sleep(0.1)
    (ctx.artifact_dir / "metrics.json").write_text(json.dumps({"lines": lines}))
    (ctx.artifact_dir / "deep").mkdir(exist_ok=True)
    (ctx.artifact_dir / "deep" / "blob.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    script = f"i=0; while [ $i -lt {lines} ]; do echo child-line-$i-padding-padding-padding; i=$((i+1)); done"
    subprocess.run(["sh", "-c", script], check=True)
    for i in range(lines):
        print(f"py-line-{i}-padding-padding-padding")
    print("last line")
    return pa.table({"y": list(range(lines))})


def task_of(marker_dir: str, name: str, **inputs: object) -> str:
    """Records each execution and returns the Ray task it ran in (fused chain members share one)."""
    import ray

    _mark(marker_dir, name)
    return ray.get_runtime_context().get_task_id() or ""


def sibling(marker_dir: str, name: str, fail_once: str = "", **inputs: object) -> str:
    """`task_of` that fails its first execution when it is `fail_once`: siblings packed in a Ray task share one."""
    import ray

    if _mark(marker_dir, name) == 1 and name == fail_once:
        raise ValueError(f"{name} fails once")
    return ray.get_runtime_context().get_task_id() or ""


def flaky_step(marker_dir: str, failures: int, **inputs: object) -> str:
    """`flaky` with inputs: a step in a chain that fails its first `failures` executions."""
    return flaky(marker_dir, failures)


def fails_first(marker_dir: str, name: str, failures: int = 1, **inputs: object) -> str:
    """Records each execution and fails the first `failures` of them; reads any inputs."""
    count = _mark(marker_dir, name)
    if count <= failures:
        raise RuntimeError(f"{name}: planned failure {count} of {failures}")
    return f"{name}({','.join(sorted(str(v) for v in inputs.values()))})"


def ticking(marker_dir: str, name: str, release: str, hold_s: float = 60.0, every_s: float = 0.2,
            **inputs: object) -> str:
    """Records each execution, then prints a numbered line every `every_s` until `release` exists (or
    `hold_s`): a running node whose log grows while it runs."""
    count = _mark(marker_dir, name)
    end, tick = time.time() + hold_s, 0
    while True:  # one line at least, released or not: every execution has a log
        print(f"tick {tick} of execution {count}", flush=True)
        tick += 1
        if time.time() >= end or Path(release).exists():
            return f"{name} ticked {tick}"
        time.sleep(every_s)


def echo(**inputs: object) -> str:
    """Prints what it read (a test reads it back from the node's log, where results do not travel over HTTP)."""
    shown = " ".join(f"{k}={v}" for k, v in sorted(inputs.items()))
    print(f"echo {shown}")
    return shown


def exit_hook(marker_dir: str, name: str) -> dict:
    """An exit hook (`on_exit`): records each execution and writes the run's outcome it was told, as JSON."""
    import json

    count = _mark(marker_dir, name)
    outcome = context().run_outcome
    (Path(marker_dir) / f"{name}-outcome.{count}.json").write_text(json.dumps(outcome))
    return dict(outcome or {})


def int_list(n: int) -> list[int]:
    return list(range(n))


def item_step(marker_dir: str, item: int, slow_from: int = 3, seconds: float = 4.0) -> int:
    """A map child: records each execution per item, sleeps for the items from `slow_from` on."""
    _mark(marker_dir, f"item{item}")
    if item >= slow_from:
        time.sleep(seconds)
    return item * 10


def item_said(marker_dir: str, item: int, fail_once: int = -1) -> int:
    """A map child that prints its item and execution (its log tells whose it is); `fail_once` fails once."""
    count = _mark(marker_dir, f"item{item}")
    print(f"item {item} execution {count}")
    if item == fail_once and count == 1:
        raise ValueError(f"item {item} fails once")
    return item * 10


def item_task(marker_dir: str, item: int, fail_once: int = -1) -> str:
    """A map child: the Ray task it ran in (children of one pack share one); `fail_once` fails the first time."""
    import ray

    if _mark(marker_dir, f"item{item}") == 1 and item == fail_once:
        raise ValueError(f"item {item} fails once")
    return ray.get_runtime_context().get_task_id() or ""


def item_unless_broken(marker_dir: str, item: int, broken: list[int]) -> int:
    """A map child that fails for the items in `broken` while `<marker_dir>/broken` exists."""
    _mark(marker_dir, f"item{item}")
    if item in broken and (Path(marker_dir) / "broken").exists():
        raise ValueError(f"item {item} is broken")
    return item * 10


def prompt_files(directory: str, n: int, distinct: int) -> str:
    """jobs.genai.data's prompts written as two Parquet files; returns the directory (what llm_generate streams)."""
    import pyarrow.parquet as pq

    from jobs.genai.data import prompts

    table = prompts(n, distinct)
    Path(directory).mkdir(parents=True, exist_ok=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), f"{directory}/part-0.parquet")
    pq.write_table(table.slice(half), f"{directory}/part-1.parquet")
    return directory
