"""The distribution: a name not taken on PyPI, a license, and install lines that use the name."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DIST = "fabric-ray"  # `fabric` on PyPI is the Fabric SSH library
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
TEXT_FILES = [p for pattern in ("*.md", "docs/*.md", "k8s/**/*.yaml", "k8s/*.md", "cluster.yaml", "scripts/*",
                                "fabric/**/*.py", "Dockerfile*", "docker/*")
              for p in REPO.glob(pattern) if p.is_file()]


def test_the_distribution_name_license_and_metadata():
    assert PROJECT["name"] == DIST and PROJECT["license"] == "Apache-2.0"
    assert "LICENSE" in PROJECT["license-files"]
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text and "Copyright 2026 the fabric authors" in license_text
    assert PROJECT["authors"] and PROJECT["keywords"] and PROJECT["scripts"]["fabric"] == "fabric.cli:main"
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # PEP 639: the expression only


def test_every_install_line_uses_the_distribution_name():
    # `pip install fabric`, `pip install 'fabric[k8s]'`: both would install the SSH library.
    wrong = re.compile(r"""pip install (-\w+ )*['"]?fabric(\[|['"\s`]|$)""", re.M)
    offenders = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in TEXT_FILES for m in wrong.finditer(p.read_text())]
    assert offenders == []
    assert any(re.search(r"fabric-ray\[", p.read_text()) for p in TEXT_FILES if p.name == "README.md")


def test_the_readme_tells_the_two_fabrics_apart():
    readme = (REPO / "README.md").read_text()
    assert f"**`{DIST}`**" in readme and "SSH library" in readme and "cannot be installed in one environment" in readme
