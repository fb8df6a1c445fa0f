"""Tiny genai models for tests (jobs/genai/tiny.py builds them; nothing is downloaded), made once per session;
a plugin of tests/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in a test may reach a hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jobs.genai.tiny import causal_lm

    return causal_lm(tmp_path_factory.mktemp("genai") / "lm")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jobs.genai.tiny import encoder

    return encoder(tmp_path_factory.mktemp("genai") / "bert")
