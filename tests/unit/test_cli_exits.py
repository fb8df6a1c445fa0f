"""The CLI's exit codes, `fail()`, `--version`, `-o` formats and the package's shape, through typer's CliRunner
against a stand-in gateway on loopback (the real HTTP client; no Ray)."""

from __future__ import annotations

import ast
import json
import re
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fabric.cli.exits import ExitCode, exit_code_for
from fabric.errors import ErrorCode, FabricError, NotFoundError, SpecError
from fabric.record import NodeStatus, SubmissionStatus
from fabric.states import NodeState, SubmissionState

REPO = Path(__file__).resolve().parents[2]
TOKEN = "good-token"
STATUS = SubmissionStatus("sub-1", "quant", SubmissionState.SUCCEEDED, 1_700_000_000.0, 1_700_000_010.0, {},
                          (NodeStatus("a", "python_task", NodeState.SUCCEEDED, 1, 1.0, 2.0, 3.0, 1.0, "", "", None),),
                          counts={"SUCCEEDED": 1})
ITEMS = [{"submission_id": "sub-1", "pipeline_id": "quant", "state": "SUCCEEDED", "created_at": 1_700_000_000.0}]


class _Gateway(BaseHTTPRequestHandler):
    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._answer(401, {"code": "UNAUTHORIZED", "title": "no valid token", "where": "Authorization",
                               "fix": "send Authorization: Bearer <token>"})
        elif path == "/api/orch/submissions":
            self._answer(200, {"items": ITEMS})
        elif path == "/api/orch/status/sub-1":
            self._answer(200, STATUS.to_dict())
        elif path == "/api/orch/logs/sub-1":
            self._answer(200, {"text": "--- attempt 1 ---\nhello\n"})
        else:
            self._answer(404, {"code": "NOT_FOUND", "title": "no such submission", "where": path,
                               "fix": "list them with `fabric ls`"})


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fabric(*args: str, token: str = TOKEN, **env: str) -> Any:
    from fabric.cli import app
    from fabric.settings import settings

    settings.cache_clear()  # the CLI reads its settings once per process; each invocation here is a new "process"
    return CliRunner().invoke(app, list(args), env={"FABRIC_TOKEN": token, "COLUMNS": "200", **env})


def test_exit_codes_are_stable_numbers():
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 5, 130]
    assert exit_code_for(SpecError("bad")) is ExitCode.BAD_INPUT
    assert exit_code_for(FabricError("x", code=ErrorCode.SPEC_CYCLE)) is ExitCode.BAD_INPUT
    assert exit_code_for(NotFoundError("x", code=ErrorCode.NOT_FOUND)) is ExitCode.ERROR
    assert exit_code_for(FabricError("x", code=ErrorCode.RAY_UNREACHABLE)) is ExitCode.UNREACHABLE
    assert exit_code_for(FabricError("x", code=ErrorCode.GATEWAY_UNREACHABLE)) is ExitCode.UNREACHABLE
    assert exit_code_for(FabricError("x", code=ErrorCode.FORBIDDEN)) is ExitCode.DENIED


def test_version_comes_from_the_installed_distribution():
    from importlib.metadata import packages_distributions, version

    [distribution] = [d for d in packages_distributions()["fabric"] if d.startswith("fabric")][:1]
    result = fabric("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"fabric {version(distribution)}"


def test_ls_and_status_in_every_output_format(gateway):
    listed = fabric("ls", "--address", gateway, "-o", "json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == ITEMS
    assert yaml.safe_load(fabric("ls", "--address", gateway, "-o", "yaml").stdout) == ITEMS
    table = fabric("ls", "--address", gateway)
    assert table.exit_code == 0 and "sub-1" in table.stdout and "quant" in table.stdout and "{" not in table.stdout
    shown = fabric("status", "sub-1", "--address", gateway, "-o", "yaml")
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.stdout)["nodes"][0]["node_id"] == "a"
    assert json.loads(fabric("status", "sub-1", "--address", gateway, "--json").stdout)["state"] == "SUCCEEDED"
    logs = fabric("logs", "sub-1", "--node", "a", "--address", gateway, "-o", "json")
    assert json.loads(logs.stdout) == {"submission_id": "sub-1", "node": "a", "text": "--- attempt 1 ---\nhello\n"}
    assert fabric("logs", "sub-1", "--node", "a", "--address", gateway).stdout.endswith("hello\n")
    assert fabric("ls", "--address", gateway, "-o", "xml").exit_code == 2  # typer's usage error


def test_errors_print_where_and_fix_and_exit_with_their_code(gateway):
    missing = fabric("status", "sub-nope", "--address", gateway)
    assert missing.exit_code == ExitCode.ERROR == 3
    assert "NOT_FOUND" in missing.output and "fabric ls" in missing.output and "Traceback" not in missing.output
    denied = fabric("ls", "--address", gateway, token="wrong")
    assert denied.exit_code == ExitCode.DENIED and "UNAUTHORIZED" in denied.output and "fix:" in denied.output


def test_a_spec_error_is_bad_input(tmp_path):
    spec = tmp_path / "cycle.yaml"
    spec.write_text("version: 1\npipeline_id: loops\nnodes:\n  - {id: a, kind: python_task, entrypoint: 'm:f'}\n"
                    "  - {id: b, kind: python_task, entrypoint: 'm:f'}\nedges: [{from: a, to: b}, {from: b, to: a}]\n")
    result = fabric("validate", str(spec))
    assert result.exit_code == ExitCode.BAD_INPUT and "SPEC_CYCLE" in result.output


def test_ls_against_a_ray_address_nobody_answers_is_a_message_not_a_traceback():
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = fabric("ls", "--address", f"127.0.0.1:{port}")
    assert result.exit_code == ExitCode.UNREACHABLE, result.output
    assert "RAY_UNREACHABLE" in result.output and "fix:" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_shell_completion_is_offered():
    assert "--install-completion" in fabric("--help").output


def test_the_console_script_points_at_the_package():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fabric"] == "fabric.cli:main"
    assert not [p.name for p in (REPO / "fabric").glob("cli_*.py")] and not (REPO / "fabric" / "console.py").exists()


def _serve_imports(path: Path) -> list[tuple[int, bool]]:
    """(line, at module level) of each import of the top-level `serve` application package."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        if any(name == "serve" or name.startswith("serve.") for name in names):
            found.append((node.lineno, id(node) in top))
    return found


def test_the_library_never_imports_the_serve_application():
    for path in (REPO / "fabric").rglob("*.py"):
        found = _serve_imports(path)
        if path.is_relative_to(REPO / "fabric" / "cli"):
            assert not [line for line, top in found if top], f"{path}: the CLI imports serve only lazily"
        else:
            assert not found, f"{path} imports the serve application at lines {[line for line, _ in found]}"


def test_every_command_and_flag_is_in_docs_cli_md():
    import typer

    from fabric.cli import app

    page = (REPO / "docs" / "cli.md").read_text()
    missing = []

    def walk(command: Any, path: str) -> None:
        if getattr(command, "commands", None):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())
            return
        if f"fabric {path}" not in page:
            missing.append(f"fabric {path}")
        for param in command.params:
            for flag in param.opts:
                if flag.startswith("--") and flag != "--help" and not re.search(rf"[`/ ]{flag}\b", page):
                    missing.append(f"fabric {path} {flag}")

    walk(typer.main.get_command(app), "")
    assert missing == [], "not in docs/cli.md"
    for code in ExitCode:
        assert f"| {int(code)} | `{code.name}` |" in page


def test_a_cli_read_over_http_waits_out_a_restart_for_seconds_not_the_sdks_minute():
    from fabric.cli.common import CLI_HTTP_RETRY_S, connect
    from fabric.remote import HttpClient
    from fabric.retry import REGISTRY_RESTART_WAIT_S

    client = connect("http://127.0.0.1:9")
    assert isinstance(client, HttpClient)
    assert client._retry_for == CLI_HTTP_RETRY_S < REGISTRY_RESTART_WAIT_S
