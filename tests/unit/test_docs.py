"""The docs name what the code has: every gateway route is in docs/gateway.md, and every route and error
code the docs name exists. (Every FABRIC_* variable: tests/unit/test_settings.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.routing import Match

from fabric.errors import ErrorCode

DOCS = Path(__file__).resolve().parents[2] / "docs"
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
    table = (DOCS / "spec.md").read_text().split("| code | meaning |", 1)[1]
    documented = set(re.findall(r"`([A-Z][A-Z_]+)`", table.split("\n\n", 1)[0]))
    codes = {str(code) for code in ErrorCode}
    assert codes - documented == set(), "error codes missing from the table in docs/spec.md"
    assert documented - codes == set(), "docs/spec.md's table names error codes fabric does not have"
