"""Submit-time checks of the ML kinds, the trainer registry and the search space (no Ray)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from fabric.errors import ErrorCode, SpecError
from fabric.kinds import available_kinds, kind_checks
from fabric.ml.base import Prepared
from fabric.ml.space import space_problems
from fabric.ml.trainers import available_trainers, get_trainer, register_trainer
from fabric.plan import ResourceUnit, compile_plan
from fabric.plan.call import NodeCall
from fabric.spec import load_spec


def spec(node: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "pipeline_id": "ml_checks", "nodes": [
        {"id": "features", "kind": "python_task", "entrypoint": "tests.ml_nodes:feature_table",
         "outs": ["feature_table"]},
        {"id": "train", "ins": ["feature_table"], **node}], "edges": [{"from": "features", "to": "train"}]}


def problems(node: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        compile_plan(load_spec(spec(node)), runnable=kind_checks())
    except SpecError as error:
        return [(p.where, p.message) for p in error.problems]
    return []


def test_the_designs_ray_job_shape_is_accepted_and_train_is_the_same_kind():
    design = {"id": "train", "kind": "ray_job", "image": "ghcr.io/archetype/trainers:0.8.1",
              "params": {"trainer": "bilstm", "epochs": 30}, "resources": {"gpu": 1, "cpu": "8", "mem": "32Gi"},
              "outs": ["model_uri", "metrics_json"]}
    assert problems(design) == []
    assert problems({**design, "kind": "train"}) == []
    kinds = available_kinds()
    assert type(kinds["ray_job"]) is type(kinds["train"]) and kinds["ray_job"].name == "ray_job"


def test_bad_ml_params_are_reported_together_with_where_and_a_hint():
    found = problems({"kind": "train", "params": {"trainer": "bilstm", "epoch": 3, "seq_len": 0, "lr": -1},
                      "outs": ["model", "metrics_json"]})
    wheres = {where for where, _ in found}
    assert {"nodes[1].params.epoch", "nodes[1].params.lr", "nodes[1].params", "nodes[1].outs"} <= wheres
    assert any("did you mean 'epochs'" in message for _, message in found)
    assert any("seq_len must be a positive integer" in message for _, message in found)
    unknown = problems({"kind": "train", "params": {"trainer": "transformer"}})
    assert unknown == [("nodes[1].params.trainer", "no trainer named 'transformer'")]


def test_a_train_node_needs_an_input():
    node = {"kind": "train", "params": {"epochs": 1}}
    found = problems(node)
    assert found == []
    bare = {"version": 1, "pipeline_id": "bare", "nodes": [{"id": "t", "kind": "train"}]}
    with pytest.raises(SpecError) as error:
        compile_plan(load_spec(bare), runnable=kind_checks())
    assert [p.where for p in error.value.problems] == ["nodes[0].ins"]
    assert error.value.problems[0].code == ErrorCode.KIND_PARAMS


def test_search_spaces_are_checked_at_submit():
    assert space_problems({"lr": {"loguniform": [0.0001, 0.01]}, "hidden": {"choice": [8, 16]},
                           "layers": {"grid": [1, 2]}, "seq_len": {"randint": [5, 10]}}) == []
    bad = dict(space_problems({"lr": {"loguniform": [0, 1]}, "hidden": [8, 16], "dropout": {"uniform": [0.5, 0.1]},
                               "seq_len": {"randint": [1.5, 4]}}))
    assert set(bad) == {"lr", "hidden", "dropout", "seq_len"}
    found = problems({"kind": "tune", "params": {"search_space": {"hiden": {"choice": [8]}}, "metric": "acc"},
                      "outs": ["best_config", "best_metrics"]})
    assert ("nodes[1].params.metric", "metric 'acc' is not reported") in found
    assert any(where == "nodes[1].params.search_space" and "hiden" in message for where, message in found)
    assert problems({"kind": "tune", "outs": ["best_config"]})[0][0] == "nodes[1].params.search_space"


def test_workers_get_the_nodes_resources_or_the_cpu_fallback():
    from dataclasses import replace

    from fabric.ml.ray_runs import worker_resources, worker_unit

    unit = ResourceUnit(num_cpus=8, num_gpus=1, memory=2**35, custom={"pool:gpu": 0.001, "gpu_mem_gb": 40},
                        workers=4, placement="SPREAD", fallback_cpus=2.0, fallback_after_s=60)
    call = NodeCall("s", "p", "n", 1, "train", None, {}, (), ("model_uri",), ("model_uri",), "/h", unit=unit,
                    device="gpu")
    assert worker_resources(worker_unit(call)) == {"CPU": 8, "GPU": 1, "memory": float(2**35), "pool:gpu": 0.001,
                                                   "gpu_mem_gb": 40}
    on_cpu = worker_unit(replace(call, device="cpu"))
    assert worker_resources(on_cpu) == {"CPU": 2.0, "memory": float(2**35), "pool:gpu": 0.001}
    assert (on_cpu.workers, on_cpu.placement) == (4, "SPREAD")
    assert worker_unit(replace(call, unit=None)) == ResourceUnit()


class _Linear:
    """A trainer of one's own: a linear model on the last row of each window."""

    name = "linear_last"
    defaults = {"n": 64}

    def check(self, params: dict[str, Any]) -> list[str]:
        return [] if params["n"] > 0 else ["n must be positive"]

    def prepare(self, inputs: Any, params: dict[str, Any]) -> Prepared:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(params["n"], 1, 3)).astype(np.float32)
        y = x[:, -1] @ np.array([1.0, -1.0, 0.5], dtype=np.float32)
        return Prepared(x[:48], y[:48], x[48:], y[48:], {"n_features": 3})

    def model(self, params: dict[str, Any], meta: Any) -> Any:
        import torch

        return torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(meta["n_features"], 1), torch.nn.Flatten(0))


def test_register_your_own_trainer_and_the_loop_checkpoints_every_epoch(tmp_path):
    register_trainer(_Linear())
    try:
        assert get_trainer("linear_last").name == "linear_last" and "bilstm" in available_trainers()
        assert problems({"kind": "train", "params": {"trainer": "linear_last", "n": 0, "hidden": 3}}) == [
            ("nodes[1].params.hidden", "train with trainer 'linear_last' takes no param 'hidden'"),
            ("nodes[1].params", "trainer 'linear_last': n must be positive")]
        from fabric.ml.loop import LOOP_DEFAULTS, latest_checkpoint, run_epochs

        params = {**LOOP_DEFAULTS, "n": 64, "trainer": "linear_last", "epochs": 3, "lr": 0.05, "batch_size": 8}
        data = get_trainer("linear_last").prepare({}, params)
        saved = []

        def report(metrics: dict[str, float], checkpoint: str | None) -> None:
            import shutil

            saved.append(metrics["epoch"])
            shutil.copytree(checkpoint, tmp_path / "store" / f"epoch-{metrics['epoch']}")

        run_epochs(params, data, rank=0, world=1, report=report, resume=None, heartbeat_dir=str(tmp_path))
        assert saved == [0, 1, 2]
        directory, epoch = latest_checkpoint(str(tmp_path / "store"))
        assert epoch == 2 and directory.endswith("epoch-2")
        beat = json.loads((tmp_path / "train-worker-0.json").read_text())
        assert beat["done"] and beat["epoch"] == 3
        # An incomplete copy (state smaller than its marker says) is passed over for an older one.
        (tmp_path / "store" / "epoch-2" / "state.pt").write_bytes(b"torn")
        assert latest_checkpoint(str(tmp_path / "store"))[1] == 1
        # Resuming from epoch 1's checkpoint trains epoch 2 only.
        again = []
        run_epochs({**params}, data, rank=0, world=1, report=lambda m, _c: again.append(m["epoch"]),
                   resume=tmp_path / "store" / "epoch-1", heartbeat_dir=None)
        assert again == [2]
    finally:
        from fabric.ml import trainers

        trainers._registered.pop("linear_last", None)
        trainers.available_trainers.cache_clear()


def test_node_call_carries_unit_and_team_for_tags():
    call = NodeCall("s1", "p", "n", 2, "train", None, {}, (), ("model_uri",), ("model_uri",), "/h", team="quant")
    from fabric.ml.tracking import run_tags

    assert run_tags(call) == {"submission_id": "s1", "pipeline_id": "p", "node_id": "n", "team": "quant",
                              "fabric.kind": "train", "fabric.attempt": "2"}
