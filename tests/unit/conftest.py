"""The unit tier starts no Ray: `ray.init` fails here, and the Ray-backed fixtures are not offered."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_ray_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = sys.modules.get("ray")
    if ray is not None:
        def refuse(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("tests/unit starts no Ray: move this test to tests/ray")

        monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="module")
def client() -> None:
    pytest.fail("tests/unit starts no Ray: the `client` fixture belongs to tests/ray")
