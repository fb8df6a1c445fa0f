"""The epoch loop every trainer shares, run inside Ray Train workers and Tune trials: a checkpoint per epoch,
resume from the last one, a heartbeat file naming the worker process and the epoch it is in."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fabric.ml.base import Prepared
from fabric.ml.storage import found_at, list_storage
from fabric.ml.trainers import get_trainer

LOOP_DEFAULTS: Mapping[str, Any] = {"epochs": 5, "lr": 1e-3, "batch_size": 256, "weight_decay": 0.0, "seed": 0}
STATE_FILE = "state.pt"
MARKER_FILE = "fabric_state.json"  # written after STATE_FILE; says which epoch and how big the state is
HEARTBEAT_EVERY_S = 0.2
REMOTE_HEARTBEAT_EVERY_S = 1.0  # through the head's sink: two actor calls a beat

Report = Callable[[dict[str, float], "str | None"], None]  # (metrics, checkpoint dir or None)


def run_epochs(config: Mapping[str, Any], data: Prepared, *, rank: int, world: int, report: Report,
               resume: Path | None, heartbeat_dir: str | None, prepare_model: Callable[[Any], Any] | None = None,
               device: Any = None, filesystem: Any = None) -> None:
    """Train `config["epochs"]` epochs from where `resume` (a checkpoint dir) left off; `report` every epoch.

    Rank 0 writes the checkpoint (model, optimizer, epoch, history); every rank reports metrics. The
    shard of rank r is every world-th sample, cut to equal length so DDP ranks step together.
    """
    import numpy as np
    import torch

    params = dict(config)
    trainer = get_trainer(params["trainer"])
    torch.manual_seed(int(params["seed"]))
    model = trainer.model(params, data.meta)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(params["lr"]),
                                 weight_decay=float(params["weight_decay"]))
    start_epoch, history = 0, []
    if resume is not None:
        state = torch.load(resume / STATE_FILE, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
    net = prepare_model(model) if prepare_model is not None else model
    device = device or torch.device("cpu")
    per_rank = len(data.x_train) // world
    x_train = torch.from_numpy(np.ascontiguousarray(data.x_train[rank::world][:per_rank]))
    y_train = torch.from_numpy(np.ascontiguousarray(data.y_train[rank::world][:per_rank]))
    x_val, y_val = torch.from_numpy(data.x_val).to(device), torch.from_numpy(data.y_val).to(device)
    scale = float(data.meta.get("y_std", 1.0)) ** 2  # loss 1.0 = as good as predicting the mean
    batch = int(params["batch_size"])
    beat = Heartbeat(heartbeat_dir, rank, resumed_from=start_epoch if resume is not None else None,
                      filesystem=filesystem)
    for epoch in range(start_epoch, int(params["epochs"])):
        started = time.perf_counter()
        beat(epoch, 0, force=True)
        net.train()
        order = torch.randperm(per_rank, generator=torch.Generator().manual_seed(int(params["seed"]) + epoch))
        total, batches = 0.0, 0
        for batches, begin in enumerate(range(0, per_rank, batch), start=1):
            idx = order[begin:begin + batch]
            xb, yb = x_train[idx].to(device), y_train[idx].to(device)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(net(xb), yb) / scale
            loss.backward()
            optimizer.step()
            total += loss.item()
            beat(epoch, batches)
        net.eval()
        with torch.no_grad():
            pred = net(x_val)
            val_loss = float(torch.nn.functional.mse_loss(pred, y_val) / scale)
            val_ic = float(torch.corrcoef(torch.stack([pred, y_val]))[0, 1]) if len(y_val) > 1 else 0.0
        metrics = {"epoch": epoch, "train_loss": total / max(batches, 1), "val_loss": val_loss,
                   "val_ic": val_ic if np.isfinite(val_ic) else 0.0, "epoch_s": time.perf_counter() - started}
        history.append(metrics)
        if rank == 0:
            with tempfile.TemporaryDirectory(prefix="fabric-ckpt-") as tmp:
                save_checkpoint(Path(tmp), model, optimizer, epoch, history, data.meta, params)
                report(metrics, tmp)
        else:
            report(metrics, None)
    beat(int(params["epochs"]), 0, force=True, done=True)


def save_checkpoint(path: Path, model: Any, optimizer: Any, epoch: int, history: list[dict[str, float]],
                    meta: Mapping[str, Any], params: Mapping[str, Any]) -> None:
    import torch

    state = path / STATE_FILE
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "history": history, "meta": dict(meta), "params": dict(params)}, state)
    (path / MARKER_FILE).write_text(json.dumps({"epoch": epoch, "state_bytes": state.stat().st_size}))


def load_trained(path: str | Path, filesystem: Any = None) -> tuple[Any, dict[str, Any]]:
    """The model a checkpoint holds, rebuilt by its trainer, and the checkpoint's state (history, params); read
    through `filesystem` when one is given."""
    import torch

    if "://" in str(path) or filesystem is not None:  # an object store (FABRIC_ARTIFACTS=s3://…), or the head
        import io

        from pyarrow import fs as pafs

        fs, base = (filesystem, str(path)) if filesystem is not None else pafs.FileSystem.from_uri(str(path))
        with fs.open_input_stream(f"{base}/{STATE_FILE}") as source:
            state = torch.load(io.BytesIO(source.read()), map_location="cpu", weights_only=False)
    else:
        state = torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)
    model = get_trainer(state["params"]["trainer"]).model(state["params"], state["meta"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def latest_checkpoint(storage: str, filesystem: Any = None) -> tuple[str, int] | None:
    """The newest complete checkpoint under a storage path (any attempt's run), as (dir, epoch); read through
    `filesystem` when one is given (the head's, for a node that shares no disk with it)."""
    import pyarrow.fs as pafs

    listed = list_storage(storage, filesystem)
    if listed is None:
        return None
    fs, infos = listed
    found: list[tuple[int, str]] = []
    for info in infos:
        if info.base_name != MARKER_FILE:
            continue
        directory = info.path.rsplit("/", 1)[0]
        try:
            with fs.open_input_stream(info.path) as stream:
                marker = json.loads(stream.read())
            state = fs.get_file_info(f"{directory}/{STATE_FILE}")
        except (OSError, ValueError):
            continue
        if state.type == pafs.FileType.File and state.size == marker.get("state_bytes"):  # a complete copy
            found.append((int(marker["epoch"]), directory))
    if not found:
        return None
    epoch, directory = max(found)
    return found_at(storage, directory, filesystem), epoch


def heartbeat_file(directory: str, rank: int) -> str:
    return f"{directory.rstrip('/')}/train-worker-{rank}.json"


def read_heartbeat(directory: str, rank: int = 0, filesystem: Any = None) -> dict[str, Any]:
    """A worker's last heartbeat (OSError or ValueError when there is none yet)."""
    path = heartbeat_file(directory, rank)
    if filesystem is None:
        return dict(json.loads(Path(path).read_text()))
    with filesystem.open_input_stream(path) as source:
        return dict(json.loads(source.read()))


class Heartbeat:
    """`train-worker-<rank>.json` in the node's artifact dir: pid, epoch, batch; rewritten atomically at
    most every 0.2 s, so an operator (or a test) can see which process trains and how far it got. With a
    `filesystem` (a node off the head, fabric/execute/headfs.py) it is written there, beside the checkpoints
    on the head, at most every second: a worker's own disk keeps nothing."""

    def __init__(self, directory: str | None, rank: int, resumed_from: int | None, filesystem: Any = None) -> None:
        self.path = heartbeat_file(directory, rank) if directory else None
        self.resumed_from, self.last, self.filesystem = resumed_from, 0.0, filesystem
        self.every = HEARTBEAT_EVERY_S if filesystem is None else REMOTE_HEARTBEAT_EVERY_S

    def __call__(self, epoch: int, batch: int, *, step: int | None = None, force: bool = False,
                 done: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or (not force and now - self.last < self.every):
            return
        self.last = now
        beat = {"pid": os.getpid(), "epoch": epoch, "batch": batch, "done": done, "resumed_from": self.resumed_from,
                "time": time.time()}
        if step is not None:  # finetune: the optimizer step (and resumed_from is a step)
            beat["step"] = step
        text = json.dumps(beat)
        if self.filesystem is not None:  # the file appears whole when the stream closes
            with self.filesystem.open_output_stream(self.path) as out:
                out.write(text.encode())
            return
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
