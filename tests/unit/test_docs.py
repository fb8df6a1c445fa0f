"""The docs name what the code has, and nothing it lacks: the gateway's routes (docs/gateway.md), the CLI's
commands and options (docs/cli.md), the error codes (docs/spec.md), the layers (docs/architecture.md), and
every relative link of the docs and the README (its file and its #anchor), and every repo path they name.
Every FABRIC_* variable is checked against docs/settings.md in tests/unit/test_settings.py."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Match

from fabric.errors import ErrorCode

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
ROUTE = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE) (/[^\s`?]*)")
PARAM = re.compile(r"\{[^}]*\}")


def _documented_routes(page: str) -> set[tuple[str, str]]:
    """(method, path) for every `METHOD /path` on the page, each `{param}` written as `{}`."""
    return {(method, PARAM.sub("{}", path)) for method, path in ROUTE.findall((DOCS / page).read_text())}


@pytest.fixture(scope="module")
def api():  # type: ignore[no-untyped-def]
    from serve.gateway import api  # imports Ray and Serve, starts nothing

    return api


def test_every_gateway_route_is_in_gateway_md(api) -> None:  # type: ignore[no-untyped-def]
    documented = _documented_routes("gateway.md")
    missing = [f"{method.upper()} {path}" for path, operations in api.openapi()["paths"].items()
               for method in operations if (method.upper(), PARAM.sub("{}", path)) not in documented]
    assert not missing, f"routes the gateway serves that docs/gateway.md does not list: {missing}"


def test_every_route_in_gateway_md_exists(api) -> None:  # type: ignore[no-untyped-def]
    documented = _documented_routes("gateway.md")
    assert len(documented) >= 10, "the route regex no longer finds the routes table"
    unknown = []
    for method, path in sorted(documented):
        scope = {"type": "http", "method": method, "path": path.replace("{}", "x"), "root_path": ""}
        if not any(route.matches(scope)[0] == Match.FULL for route in api.routes):
            unknown.append(f"{method} {path}")
    assert not unknown, f"docs/gateway.md lists routes the gateway does not serve: {unknown}"


def test_every_error_code_is_in_spec_md_and_no_other() -> None:
    table = (DOCS / "spec.md").read_text().split("| code | meaning |", 1)[1].split("\n\n", 1)[0]
    # The codes a row documents are in its first cell; its meaning may name other codes freely.
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("|")]
    documented = {code for cell in first_cells for code in re.findall(r"`([A-Z][A-Z_]+)`", cell)}
    codes = {str(code) for code in ErrorCode}
    assert codes - documented == set(), "error codes missing from the table in docs/spec.md"
    assert documented - codes == set(), "docs/spec.md's table names error codes fabric does not have"


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and subcommand of a click command tree, as (path, command)."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not sub.hidden:
            yield from _commands(sub, (*path, name))


@pytest.fixture(scope="module")
def cli() -> dict[tuple[str, ...], Any]:
    import typer.main

    from fabric.cli import app

    return dict(_commands(typer.main.get_command(app)))


def test_every_cli_command_and_option_is_in_cli_md(cli) -> None:  # type: ignore[no-untyped-def]
    import click

    text = (DOCS / "cli.md").read_text()
    assert len(cli) > 10, "the CLI walk found too few commands"
    missing = [f"fabric {' '.join(path)}" for path in cli
               if path and not re.search(rf"\bfabric {re.escape(' '.join(path))}(?![\w-])", text)]
    assert not missing, f"commands docs/cli.md does not name: {missing}"
    options = [f"fabric {' '.join(path)} {param.opts[0]}" for path, command in cli.items() for param in command.params
               if isinstance(param, click.Option) and not param.hidden
               and not any(name in text for name in param.opts + param.secondary_opts if name.startswith("--"))]
    assert not options, f"options docs/cli.md does not name: {options}"


def test_every_command_in_cli_md_exists(cli) -> None:  # type: ignore[no-untyped-def]
    """A `fabric X [Y]` line in a code block of docs/cli.md names a real command (Y: when X is a group)."""
    unknown, in_block = [], False
    for line in (DOCS / "cli.md").read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        match = re.match(r"\s*(?:\$ )?fabric ([a-z][\w-]*)(?: ([a-z][\w-]*))?", line) if in_block else None
        if match is None:
            continue
        group = (match[1],)
        if group not in cli or (getattr(cli[group], "commands", None) and match[2]
                                and (match[1], match[2]) not in cli):
            unknown.append(line.strip())
    assert not unknown, f"docs/cli.md shows commands the CLI does not have: {unknown}"


def test_the_layers_table_names_every_layered_package_and_module() -> None:
    """docs/architecture.md's table has a row entry for every package and module the layers contract places."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    names = {name.strip("() ") for layer in layers for name in layer.split("|")}
    table = (DOCS / "architecture.md").read_text().split("## Layers", 1)[1].split("\n## ", 1)[0]
    missing = []
    for name in sorted(names):
        parts = name.split(".")
        path = REPO.joinpath(*parts)
        if path.is_dir():
            forms = [f"`{'/'.join(parts)}/`", f"`{parts[-1]}/`"]
        elif path.with_suffix(".py").is_file():
            forms = [f"`{'/'.join(parts)}.py`", f"`{parts[-1]}.py`"]
        else:
            continue  # an optional layer entry whose module is gone
        if not any(form in table for form in forms):
            missing.append(name)
    assert not missing, f"docs/architecture.md's layers table does not name: {missing}"


def _anchors(page: Path) -> set[str]:
    """The #anchors of a page's headings, as GitHub makes them (lower case, punctuation dropped, - for space)."""
    anchors, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif (heading := re.match(r"#{1,6} (.+)", line)) and not in_code:
            anchors.add(re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-"))
    return anchors


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for page in [*sorted(DOCS.glob("*.md")), REPO / "README.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # https://, mailto:
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, f"broken links: {broken}"


# A repo path as the docs write it (`fabric/settings.py`, tests/ray/test_engine.py::test_x), not part of another
# path (`/data/fabric/tokens.yaml`, `~/.fabric/mlflow.db`).
TOP = "fabric|serve|jobs|tests|scripts|bench|k8s|docker|notebooks|docs"
REPO_PATH = re.compile(rf"(?<![\w./~$:-])((?:{TOP})/[\w./-]*[\w/])")


def test_every_repo_path_the_docs_name_exists() -> None:
    missing = sorted({f"{page.name}: {path}" for page in [*DOCS.glob("*.md"), REPO / "README.md"]
                      for path in REPO_PATH.findall(page.read_text()) if not (REPO / path).exists()})
    assert not missing, f"the docs name paths that do not exist: {missing}"
