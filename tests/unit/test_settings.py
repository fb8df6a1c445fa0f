"""fabric/settings.py: every FABRIC_* variable read once, typed, with a fix for a bad value, and documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fabric.errors import ErrorCode, FabricError
from fabric.settings import DOC_HEADER, ENV, Settings, main, markdown, settings, variables

REPO = Path(__file__).resolve().parents[2]
NAME = re.compile(r"FABRIC_[A-Z0-9_]*[A-Z0-9]")
# FABRIC_* names that are not settings of fabric itself, each with why.
NOT_SETTINGS = {
    "FABRIC_RELIABILITY_OUT": "test-only: where the reliability suite writes its results",
    "FABRIC_UI_SCREENSHOT": "test-only: where the UI test copies its screenshot",
    "FABRIC_SHARED_DIR": "test-only: where the k8s tests find the KubeRay CRDs",
    "FABRIC_GATEWAY_URL": "read by notebooks/gateway.ipynb only, not by fabric",
    "FABRIC_TEST_NO_POSTGRES": "test-only: 1 skips the PostgreSQL tests (tests/pg.py) on purpose",
    "FABRIC_TEST_LLM_PROMOTE": "test-only: 1 runs the opt-in LLM promotion test (tests/ray/test_serving.py)",
    "FABRIC_TEST_EAGER_TWIN": "test-only: 1 runs the opt-in eager autoscaler twin (tests/ray/test_cluster_yaml.py)",
}
SCANNED = ["fabric", "serve", "jobs", "scripts", "bench", "k8s", "docs", "notebooks", "cluster.yaml", "README.md"]
# Modules that still read os.environ themselves until the CLI package moves onto settings().
CLI_PENDING = re.compile(r"^fabric/(cli[^/]*\.py|console\.py|cli/)")


def _files() -> list[Path]:
    out = []
    for name in SCANNED:
        path = REPO / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        out += [p for p in files if p.suffix in {".py", ".md", ".yaml", ".yml", ".ipynb", ".sh", ".toml", ".txt"}
                and "__pycache__" not in p.parts]
    return out


def test_defaults_follow_the_home():
    config = Settings.from_env({}, home="/data/fabric")
    assert config.home == "/data/fabric"
    assert config.artifacts == "/data/fabric/artifacts" and config.tokens == "/data/fabric/tokens.yaml"
    assert config.scheduling == "/data/fabric/scheduling.yaml" and config.secrets_dir == "/data/fabric/secrets"
    assert config.lineage_file == "/data/fabric/lineage/events.jsonl"
    assert config.mlflow_uri == "sqlite:////data/fabric/mlflow.db"
    # Lineage is unset: the standard OPENLINEAGE_* variables then decide (fabric/actors/observe_config.py).
    assert (config.store, config.persist_outputs, config.lineage) == ("sqlite", "needed", None)
    assert (config.lineage_file_max_bytes, config.lineage_file_backups, config.log_format) == (64 << 20, 5, "text")
    assert (config.keep_finished, config.keep_results, config.sweep_interval_s) == (1000, 100, 3600.0)
    assert config.admission is True  # admission is the default; FABRIC_ADMISSION=0 turns it off
    assert not (config.skip_feasibility or config.use_images)
    assert config.token is None and config.otlp_endpoint is None
    assert Settings.from_env({}).home == str(Path.home() / ".fabric")


def test_values_are_parsed_to_their_types_and_an_empty_value_is_unset():
    config = Settings.from_env({
        "FABRIC_HOME": "/h", "FABRIC_KEEP_RESULTS": "7", "FABRIC_SWEEP_INTERVAL_S": "0.5",
        "FABRIC_ADMISSION": "off", "FABRIC_SKIP_FEASIBILITY": "1", "FABRIC_USE_IMAGES": "off",
        "FABRIC_STORE": "MEMORY", "FABRIC_LINEAGE": "none", "FABRIC_ARTIFACTS": "s3://b/x",
        "FABRIC_MLFLOW_URI": "", "MLFLOW_TRACKING_URI": "http://mlflow:5000", "FABRIC_OTLP_ENDPOINT": ""})
    assert (config.keep_results, config.sweep_interval_s) == (7, 0.5)
    assert config.admission is False and config.skip_feasibility is True and config.use_images is False
    assert (config.store, config.lineage, config.artifacts) == ("memory", "off", "s3://b/x")
    assert config.scheduling == "/h/scheduling.yaml"  # paths follow FABRIC_HOME from the same environment
    assert config.mlflow_uri == "http://mlflow:5000" and config.otlp_endpoint is None


@pytest.mark.parametrize(("value", "parsed"), [
    ("SQLite", "sqlite"), ("memory", "memory"),
    ("postgresql://Fabric@db.internal:5432/Record", "postgresql://Fabric@db.internal:5432/Record"),  # kept as given
    ("postgres://u@h/d", "postgres://u@h/d"),
])
def test_the_store_is_sqlite_memory_or_a_postgresql_url(value, parsed):
    assert Settings.from_env({"FABRIC_STORE": value}).store == parsed


@pytest.mark.parametrize(("env", "variable"), [
    ({"FABRIC_KEEP_RESULTS": "ten"}, "FABRIC_KEEP_RESULTS"),
    ({"FABRIC_KEEP_FINISHED": "-1"}, "FABRIC_KEEP_FINISHED"),
    ({"FABRIC_SWEEP_INTERVAL_S": "0"}, "FABRIC_SWEEP_INTERVAL_S"),
    ({"FABRIC_ADMISSION": "maybe"}, "FABRIC_ADMISSION"),
    ({"FABRIC_STORE": "mongo"}, "FABRIC_STORE"),
    ({"FABRIC_STORE": "mysql://u@h/d"}, "FABRIC_STORE"),
    ({"FABRIC_PERSIST_OUTPUTS": "all"}, "FABRIC_PERSIST_OUTPUTS"),
    ({"FABRIC_LINEAGE": "http"}, "FABRIC_LINEAGE_URL"),
])
def test_a_bad_value_names_the_variable_and_the_fix(env, variable):
    with pytest.raises(FabricError) as caught:
        Settings.from_env(env)
    error = caught.value
    assert error.code == ErrorCode.SETTINGS_INVALID and error.where == variable
    assert variable in str(error) and variable in error.fix


def test_secrets_are_not_shown():
    config = Settings.from_env({"FABRIC_TOKEN": "tok-123", "FABRIC_LINEAGE": "http", "FABRIC_LINEAGE_URL": "http://m",
                                "FABRIC_LINEAGE_API_KEY": "key-456"})
    assert config.token == "tok-123" and config.lineage_api_key == "key-456"
    assert "tok-123" not in repr(config) and "key-456" not in repr(config)
    with pytest.raises(FabricError) as caught:
        Settings.from_env({"FABRIC_KEEP_RESULTS": "x", "FABRIC_TOKEN": "tok-123"})
    assert "tok-123" not in str(caught.value)


def test_the_process_settings_are_read_once(monkeypatch, tmp_path):
    settings.cache_clear()
    try:
        monkeypatch.setenv("FABRIC_HOME", str(tmp_path))
        first = settings()
        monkeypatch.setenv("FABRIC_HOME", str(tmp_path / "other"))
        assert settings() is first and first.home == str(tmp_path)
        assert settings("/elsewhere").artifacts == "/elsewhere/artifacts"  # a worker resolves the registry's home
        settings.cache_clear()
        assert settings().home == str(tmp_path / "other")
    finally:
        settings.cache_clear()


def test_every_field_is_documented_once():
    names = [var.env for var in variables().values()]
    assert len(names) == len(set(names)) and all(NAME.fullmatch(n) for n in names)
    assert all(var.doc and var.type and var.shown for var in variables().values())
    assert ENV["keep_results"] == "FABRIC_KEEP_RESULTS"


def test_docs_settings_md_is_what_the_script_generates_now(capsys):
    assert main(["fabric.settings", "--markdown"]) == 0
    generated = capsys.readouterr().out
    assert generated == DOC_HEADER + markdown()
    written = (REPO / "docs" / "settings.md").read_text()
    assert written == generated, "docs/settings.md is stale: python -m fabric.settings --markdown > docs/settings.md"


def test_the_doc_script_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "fabric.settings", "--markdown"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "| `FABRIC_KEEP_RESULTS` | int >= 0 | 100 |" in out


def test_every_fabric_variable_in_the_repo_is_a_setting():
    known = {var.env for var in variables().values()}
    unknown: dict[str, list[str]] = {}
    for path in _files():
        for name in set(NAME.findall(path.read_text(errors="replace"))):
            if name not in known and name not in NOT_SETTINGS:
                unknown.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert not unknown, f"add these to fabric/settings.py (or NOT_SETTINGS with a reason): {unknown}"
    assert not known & NOT_SETTINGS.keys()


READ = re.compile(r"""(getenv|environ\.get)\(\s*["']FABRIC_|environ\[\s*["']FABRIC_[A-Z0-9_]+["']\s*\](?!\s*=(?!=))""")


def test_the_read_pattern_tells_a_read_from_a_write():
    reads = ['os.environ.get("FABRIC_HOME") or x', 'os.getenv("FABRIC_A", "1")', 'y = os.environ["FABRIC_A"]',
             'if os.environ["FABRIC_A"] == "1":']
    writes = ['os.environ["FABRIC_HOME"] = home', 'env = {"FABRIC_HOME": "/data"}']
    assert all(READ.search(line) for line in reads) and not any(READ.search(line) for line in writes)


def test_no_module_reads_a_fabric_variable_itself():
    """Reads go through fabric/settings.py; setting one for a child process (runtime_env, env=) is fine."""
    offenders = []
    for top in ("fabric", "serve", "jobs"):
        for path in (REPO / top).rglob("*.py"):
            rel = str(path.relative_to(REPO))
            if rel == "fabric/settings.py" or CLI_PENDING.match(rel):
                continue
            offenders += [f"{rel}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1) if READ.search(line)]
    assert not offenders, offenders
