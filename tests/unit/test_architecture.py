"""The layering and the public surface: checked, not promised."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fabric as fb

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def test_import_linter_contracts_hold():
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_importing_fabric_starts_nothing_and_does_not_import_ray():
    code = "import sys, fabric; print('ray' in sys.modules, 'fabric.client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_public_surface_is_small_and_complete():
    assert 12 <= len(fb.__all__) <= 20
    for name in fb.__all__:
        assert getattr(fb, name) is not None
    assert callable(fb.connect) and fb.Submission.__name__ == "Submission"


def test_modules_stay_small_and_say_what_they_own():
    for path in (REPO / "fabric").rglob("*.py"):
        text = path.read_text()
        assert text.lstrip().startswith('"""'), f"{path} has no module docstring"
        assert text.count("\n") <= 420, f"{path} is {text.count(chr(10))} lines: split it"
