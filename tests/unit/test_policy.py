"""The code policy (fabric/spec/policy.py) and the teams config (fabric/spec/teams.py), pure: every refused case,
and what each role may do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fabric.errors import ErrorCode, FabricError
from fabric.spec import load_spec, parse_runtime_params
from fabric.spec.policy import Principal, ServedName, refusal, serve_capacity, violations
from fabric.spec.teams import Role, TeamConfig, TeamsConfig, parse_teams

RUNNER = Principal("a", Role.RUNNER)
DEVELOPER = Principal("a", Role.DEVELOPER)
ADMIN = Principal("ops", Role.ADMIN)


def _dag(*nodes: dict[str, Any], default: dict[str, Any] | None = None) -> Any:
    spec: dict[str, Any] = {"version": 1, "pipeline_id": "p", "nodes": list(nodes)}
    models = [n["id"] for n in nodes if n["kind"] in ("serve", "promote")]
    if models:  # their model_uri comes from a registered node, placed last so the indices above stay
        spec["nodes"].append(_task("jobs.ml.card:model_uri", id="model", outs=["model_uri", "metrics"]))
        spec["edges"] = [{"from": "model", "to": m} for m in models]
    if default is not None:
        spec["resources"] = {"default": default}
    return load_spec(spec)


def _task(entrypoint: str = "jobs.quant.data:generate_market_data", **extra: Any) -> dict[str, Any]:
    return {"id": extra.pop("id", "t"), "kind": "python_task", "entrypoint": entrypoint, **extra}


def _serve(name: str = "xs", node_id: str = "serve", kind: str = "serve", **params: Any) -> dict[str, Any]:
    ins = ["model_uri", "metrics"] if kind == "promote" else ["model_uri"]
    return {"id": node_id, "kind": kind, "ins": ins, "params": {"name": name, **params}}


def _check(dag: Any, who: Principal = RUNNER, config: TeamConfig | None = None, runtime: dict | None = None,
           **kwargs: Any) -> list[tuple[str, str]]:
    found = violations(dag, parse_runtime_params(runtime or {}), who, config or TeamConfig(), **kwargs)
    assert all(p.code is ErrorCode.POLICY_DENIED for p in found)
    return [(p.where, p.message.split("(rule ")[1].split(",")[0]) for p in found]


# -- what a runner may not do -------------------------------------------------------------------------

@pytest.mark.parametrize("entrypoint", ["subprocess:run", "os:system", "runpy:run_path", "shutil:rmtree",
                                        "timeit:timeit", "builtins:exec", "jobsx.evil:run", "tests.nodes:add"])
def test_a_runner_may_not_call_code_outside_the_registered_packages(entrypoint: str) -> None:
    assert _check(_dag(_task(entrypoint))) == [("nodes[0].entrypoint", "code.entrypoint")]


@pytest.mark.parametrize("entrypoint", ["jobs.quant.data:os.system", "jobs.quant.data:_private"])
def test_a_runner_may_not_walk_out_of_a_module_through_its_attributes(entrypoint: str) -> None:
    assert _check(_dag(_task(entrypoint))) == [("nodes[0].entrypoint", "code.entrypoint")]


def test_a_runner_may_not_ship_notebook_functions() -> None:
    dag = _dag(_task("__main__:f"))
    assert _check(dag, inline_code=["__main__:f"]) == [("nodes[0].entrypoint", "code.entrypoint"),
                                                        ("entrypoint", "code.inline")]


@pytest.mark.parametrize("key,value", [("working_dir", "s3://bucket/code.zip"), ("py_modules", ["s3://b/m.zip"])])
def test_a_runner_may_not_ship_code_in_runtime_env(key: str, value: Any) -> None:
    found = _check(_dag(_task()), runtime={"runtime_env": {key: value}})
    assert found == [(f"runtime_params.runtime_env.{key}", "code.runtime_env")]


@pytest.mark.parametrize("key", ["pip", "conda", "uv", "container", "working_dir", "py_modules", "image_uri"])
def test_a_runner_client_may_not_bring_its_own_runtime_env_code(key: str) -> None:
    found = _check(_dag(_task()), job_runtime_env={key: "x", "env_vars": {"A": "1"}})
    assert found == [(f"job_runtime_env.{key}", "code.runtime_env")]


@pytest.mark.parametrize("name", ["PYTHONPATH", "PYTHONSTARTUP", "LD_PRELOAD", "BASH_ENV", "FABRIC_HOME"])
def test_a_runner_may_not_set_variables_that_load_code(name: str) -> None:
    assert _check(_dag(_task(env={name: "/tmp/x"}))) == [(f"nodes[0].env.{name}", "code.env")]
    found = _check(_dag(_task()), runtime={"runtime_env": {"env_vars": {name: "/tmp/x"}}})
    assert found == [(f"runtime_params.runtime_env.env_vars.{name}", "code.env")]


def test_a_runner_may_not_name_an_image_its_team_was_not_given() -> None:
    assert _check(_dag(_task(image="evil/image:1"))) == [("nodes[0].image", "code.image")]
    assert _check(_dag(_task(image="ok/image:1")), config=TeamConfig(images=["ok/image:1"])) == []


def test_a_runner_may_not_read_files_through_sql() -> None:
    node = {"id": "q", "kind": "sql", "params": {"query": "SELECT * FROM read_csv('/root/.fabric/tokens.yaml')"}}
    assert _check(_dag(node)) == [("nodes[0].params.query", "sql.files")]


def test_the_policy_reads_node_params_as_the_run_resolves_them() -> None:
    spec = {"version": 1, "pipeline_id": "p", "params": {"q": {"type": "string", "default": "SELECT 1 AS x"},
                                                         "model": {"type": "string", "default": "mine"}},
            "nodes": [{"id": "q", "kind": "sql", "params": {"query": "{{ params.q }}"}},
                      {**_serve("{{ params.model }}"), "resources": {"cpu": "100m"}},
                      _task("jobs.ml.card:model_uri", id="model", outs=["model_uri"])],
            "edges": [{"from": "model", "to": "serve"}]}
    dag = load_spec(spec)
    served = {"theirs": ServedName("b")}
    assert _check(dag, served=served) == []
    attack = {"params": {"q": "SELECT * FROM read_csv('/etc/passwd')", "model": "theirs"}}
    assert _check(dag, runtime=attack, served=served) == [("nodes[0].params.query", "sql.files"),
                                                          ("nodes[1].params.name", "serve.owner")]


def test_a_runner_serves_models_from_the_clusters_store_only() -> None:
    dag = _dag(_serve(tracking_uri="sqlite:////elsewhere/mlflow.db"))
    assert _check(dag) == [("nodes[0].params.tracking_uri", "serve.tracking_uri")]


def test_a_runner_stays_in_its_pools_and_resources() -> None:
    config = TeamConfig(pools=["cpu"], resources=["accelerator_type:A100"])
    assert _check(_dag(_task(pool="gpu")), config=config) == [("nodes[0].pool", "placement.pool")]
    assert _check(_dag(_task()), config=config, runtime={"affinity": {"compute_pool": "gpu"}}) == [
        ("runtime_params.affinity.compute_pool", "placement.pool")]
    bad = _dag(_task(resources={"custom": {"pool:gpu": 1, "licence": 1}}))
    assert _check(bad, config=config) == [("nodes[0].resources.custom.pool:gpu", "placement.resource"),
                                          ("nodes[0].resources.custom.licence", "placement.resource")]
    good = _dag(_task(pool="cpu", resources={"custom": {"pool:cpu": 1, "accelerator_type:A100": 1}}))
    assert _check(good, config=config, runtime={"affinity": {"compute_pool": "cpu"}}) == []
    # No pools in the config: a runner names none.
    assert _check(_dag(_task(pool="cpu"))) == [("nodes[0].pool", "placement.pool")]


# -- whatever the role --------------------------------------------------------------------------------

@pytest.mark.parametrize("who", [RUNNER, DEVELOPER, ADMIN])
def test_no_role_may_place_work_on_the_head(who: Principal) -> None:
    dag = _dag(_task(resources={"custom": {"node:__internal_head__": 0.001}}))
    assert _check(dag, who) == [("nodes[0].resources.custom.node:__internal_head__", "placement.head")]
    default = _dag(_task(), default={"custom": {"node:__internal_head__": 1}})
    assert _check(default, who) == [("resources.default.custom.node:__internal_head__", "placement.head")]


@pytest.mark.parametrize("who", [RUNNER, DEVELOPER])
def test_a_node_that_asks_for_nothing_could_land_on_the_head(who: Principal) -> None:
    assert _check(_dag(_task(resources={"cpu": 0})), who) == [("nodes[0].resources.cpu", "placement.head")]
    assert _check(_dag(_task(), default={"cpu": 0}), who) == [("nodes[0].resources.cpu", "placement.head")]
    assert _check(_dag(_task(resources={"cpu": 0, "gpu": 1})), who) == []
    assert _check(_dag(_task(resources={"cpu": "100m"}), default={"cpu": 0}), who) == []
    assert _check(_dag(_task(resources={"cpu": 0})), ADMIN) == []


@pytest.mark.parametrize("who", [RUNNER, DEVELOPER])
def test_only_an_admin_pins_work_to_a_node(who: Principal) -> None:
    dag = _dag(_task(resources={"custom": {"node:10.0.0.5": 0.01}}))
    assert _check(dag, who) == [("nodes[0].resources.custom.node:10.0.0.5", "placement.node")]
    assert _check(dag, ADMIN) == []


# -- what is allowed ----------------------------------------------------------------------------------

def test_a_runner_runs_registered_code_and_the_builtin_kinds() -> None:
    dag = load_spec(Path("jobs/dags/quant_backtest.yaml").read_text())
    assert _check(dag) == []
    config = TeamConfig(packages=["research_lib.*"])
    assert _check(_dag(_task("research_lib.models:fit"), _task("jobs:main", id="u")), config=config) == []
    assert _check(_dag(_task("research_lib_evil:fit")), config=config) == [("nodes[0].entrypoint", "code.entrypoint")]
    assert _check(_dag(_task(env={"FEATURE_VIEW": "v2"})), runtime={"runtime_env": {"env_vars": {"A": "1"}}}) == []
    sql = {"id": "q", "kind": "sql", "params": {"query": "SELECT already_read FROM t"}}
    assert _check(_dag(sql)) == []


@pytest.mark.parametrize("who", [DEVELOPER, ADMIN])
def test_a_developer_ships_its_own_code(who: Principal) -> None:
    dag = _dag(_task("tests.nodes:add", env={"PYTHONPATH": "/code"}, image="mine:1"), _task("__main__:f", id="u"))
    assert _check(dag, who, runtime={"runtime_env": {"working_dir": "s3://b/c.zip"}},
                  inline_code=["__main__:f"], job_runtime_env={"pip": ["x"]}) == []


# -- served names and capacity ------------------------------------------------------------------------

def test_a_served_name_is_its_first_teams() -> None:
    served = {"xs": ServedName("b", 0.1, 1)}
    for kind in ("serve", "promote"):
        dag = _dag(_serve(kind=kind))
        assert _check(dag, DEVELOPER, served=served) == [("nodes[0].params.name", "serve.owner")]
        assert _check(dag, Principal("b", Role.RUNNER), served=served) == []
        assert _check(dag, ADMIN, served=served) == []
    assert _check(_dag(_serve("fresh")), DEVELOPER, served=served) == []


def test_serve_capacity_counts_replicas_cpus_and_the_canary() -> None:
    assert serve_capacity(_dag(_serve(num_replicas=3, replica_cpus=0.5)).nodes[0]) == (1.5, 3)
    assert serve_capacity(_dag(_serve(autoscaling={"min_replicas": 1, "max_replicas": 4})).nodes[0]) == (
        pytest.approx(0.4), 4)
    assert serve_capacity(_dag(_serve(kind="promote", num_replicas=2, replica_cpus=1)).nodes[0]) == (4.0, 4)
    assert serve_capacity(_dag(_serve(num_replicas="many")).nodes[0]) == (pytest.approx(0.1), 1)


def test_a_team_stays_under_its_serve_capacity_over_all_its_names() -> None:
    config = TeamConfig.model_validate({"serve": {"max_cpus": 2, "max_replicas": 4}})
    served = {"old": ServedName("a", 1.5, 2), "theirs": ServedName("b", 50, 50)}
    over = _dag(_serve(num_replicas=2, replica_cpus=0.5))
    assert _check(over, DEVELOPER, config, served=served) == [("nodes[0].params.replica_cpus", "serve.capacity")]
    many = _dag(_serve(autoscaling={"max_replicas": 3}))
    assert _check(many, RUNNER, config, served=served) == [("nodes[0].params.autoscaling.max_replicas",
                                                            "serve.capacity")]
    # Redeploying `old` replaces its capacity rather than adding to it.
    assert _check(_dag(_serve("old", num_replicas=2, replica_cpus=1)), DEVELOPER, config, served=served) == []
    assert _check(over, ADMIN, config, served=served) == []


def test_the_refusal_names_field_rule_and_role() -> None:
    problems = violations(_dag(_task("os:system")), parse_runtime_params({}), RUNNER, TeamConfig())
    error = refusal(RUNNER, problems)
    assert error.code is ErrorCode.POLICY_DENIED and error.where == "nodes[0].entrypoint"
    assert "role runner" in error.message and "rule code.entrypoint" in error.message


# -- the teams config ---------------------------------------------------------------------------------

def test_the_teams_config_parses_and_names_bad_fields() -> None:
    teams = parse_teams(yaml.safe_load("""
a: {packages: [research_lib, "jobs_extra.*"], pools: [cpu], serve: {max_cpus: 4, publish: {xs: [b]}}}
b: {serve: {publish: {ys: ["*"]}}}
"""))
    assert teams.team("a").code_prefixes() == ("jobs", "research_lib", "jobs_extra")
    assert teams.team("unlisted") == TeamConfig()
    assert teams.may_predict("a", "xs", "a") and teams.may_predict("a", "xs", "b")
    assert not teams.may_predict("a", "xs", "c") and not teams.may_predict("a", "other", "b")
    assert teams.may_predict("b", "ys", "anyone")
    assert parse_teams(None) == TeamsConfig()
    with pytest.raises(FabricError) as bad:
        parse_teams({"a": {"packges": ["x"], "serve": {"max_cpus": -1}}})
    assert bad.value.code is ErrorCode.SETTINGS_INVALID
    assert {p.where for p in bad.value.problems} == {"teams.a.packges", "teams.a.serve.max_cpus"}
    with pytest.raises(FabricError):
        parse_teams({"a": {"packages": ["not a package"]}})
    with pytest.raises(FabricError):
        parse_teams(["a"])


def test_tokens_files_from_before_roles_keep_their_power(tmp_path: Path) -> None:
    from serve.auth import TokenTable, hash_token, mint_token

    file = tmp_path / "tokens.yaml"
    file.write_text(yaml.safe_dump({"tokens": [{"team": "a", "sha256": hash_token("old"), "admin": False},
                                               {"team": "ops", "sha256": hash_token("boss"), "admin": True}]}))
    runner = mint_token(file, "a", role="runner")
    table = TokenTable.load(file)
    assert table.authenticate("Bearer old") == Principal("a", Role.DEVELOPER)
    assert table.authenticate("Bearer boss") == Principal("ops", Role.ADMIN)
    assert table.authenticate(f"Bearer {runner}") == Principal("a", Role.RUNNER)
    boss = mint_token(file, "ops", admin=True)
    assert TokenTable.load(file).authenticate(f"Bearer {boss}").admin
    with pytest.raises(FabricError):
        mint_token(file, "a", admin=True, role="runner")
    file.write_text(yaml.safe_dump({"tokens": [{"team": "a", "sha256": "x", "role": "root"}]}))
    with pytest.raises(FabricError) as bad:
        TokenTable.load(file)
    assert bad.value.code is ErrorCode.SETTINGS_INVALID and bad.value.where == "tokens[0].role"


def test_fabric_token_mints_a_role(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fabric.cli import app
    from serve.auth import TokenTable

    file = tmp_path / "tokens.yaml"
    minted = CliRunner().invoke(app, ["token", "--team", "a", "--role", "runner", "--file", str(file)])
    assert minted.exit_code == 0, minted.output
    token = minted.stdout.strip().splitlines()[0]
    assert TokenTable.load(file).authenticate(f"Bearer {token}") == Principal("a", Role.RUNNER)
    refused = CliRunner().invoke(app, ["token", "--team", "a", "--role", "root", "--file", str(file)])
    assert refused.exit_code == 2 and "unknown role" in refused.output
