"""Shared fixtures: one real local Ray per test module, small and torn down after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fabric_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fabric-home")


@pytest.fixture(scope="module")
def client(fabric_home: Path) -> Iterator[object]:
    """A fabric Client on a fresh local Ray with 2 CPUs (and 4 fake GPUs), one per module."""
    import ray

    import fabric as fb

    os.chdir(REPO)  # workers import `tests.nodes` and `jobs` from the driver's working directory
    fabric_client = fb.connect("local", num_cpus=2, num_gpus=4, home=str(fabric_home))
    yield fabric_client
    ray.shutdown()
