"""Scopes and names that belong to teams, the pure parts: grants (secrets scopes, max priority, shared cache),
per-team submission ids, per-team cache keys, and secrets delivered by the head (never shown, never pickled
into the node's call)."""

from __future__ import annotations

import pickle

import pytest
import yaml

from fabric.errors import ConflictError, ErrorCode, FabricError
from fabric.execute.cache import cache_namespace, namespaced_key
from fabric.plan.call import NodeCall
from fabric.record import MemoryStore, SubmissionRecord
from fabric.record.ids import MAX_ID_LENGTH, claim_id, team_record
from fabric.schedule.grants import TeamGrants, check_submission, grants_for, parse_grants
from fabric.secrets import MAX_SECRET_BYTES, head_secrets, read_secret
from fabric.spec import Priority, load_spec, parse_runtime_params
from fabric.types import team_prefix, team_submission_id
from serve.auth import TokenTable, hash_token


def dag(**node_extra) -> dict:
    return {"version": 1, "pipeline_id": "p", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "jobs.quant.data:generate_market_data"},
        {"id": "b", "kind": "python_task", "entrypoint": "jobs.quant.data:generate_market_data", **node_extra}]}


def check(grants: TeamGrants, spec: dict, params: dict | None = None) -> None:
    check_submission(grants, "research", load_spec(spec), parse_runtime_params(params or {}))


# -- grants ---------------------------------------------------------------------------------------------------

def test_an_ungranted_secrets_scope_is_forbidden_naming_the_field_the_rule_and_the_team():
    with pytest.raises(FabricError) as info:
        check(TeamGrants(secrets_scopes=("lake-ro",)), dag(), {"secrets_scope": ["lake-ro", "trading-keys"]})
    error = info.value
    assert error.code is ErrorCode.FORBIDDEN and error.where == "runtime_params.secrets_scope"
    assert "'research'" in error.message and "'trading-keys'" in error.message and "lake-ro" in error.message
    assert [p.where for p in error.problems] == ["runtime_params.secrets_scope"]
    check(TeamGrants(secrets_scopes=("lake-*",)), dag(), {"secrets_scope": ["lake-ro", "lake-rw"]})  # patterns


def test_no_grants_means_no_scope_and_at_most_normal_priority():
    least = grants_for({}, "anyone")
    assert least == TeamGrants() and least.max_priority is Priority.NORMAL and not least.shared_cache
    with pytest.raises(FabricError, match="not granted secrets scope"):
        check(least, dag(), {"secrets_scope": ["x"]})
    check(least, dag(), {"priority": "normal"})


@pytest.mark.parametrize(("spec", "params", "where"), [
    (dag(), {"priority": "critical"}, "runtime_params.priority"),
    ({**dag(), "slo": {"priority": "critical"}}, {}, "slo.priority"),
    (dag(slo={"priority": "high"}), {}, "nodes[1].slo.priority"),
])
def test_a_priority_above_the_teams_max_is_forbidden_wherever_it_is_claimed(spec, params, where):
    with pytest.raises(FabricError) as info:
        check(TeamGrants(max_priority=Priority.NORMAL), spec, params)
    assert info.value.code is ErrorCode.FORBIDDEN and info.value.where == where
    assert "max_priority is 'normal'" in info.value.message and "'research'" in info.value.message
    check(TeamGrants(max_priority=Priority.CRITICAL), spec, params)  # granted: fine


def test_the_submissions_priority_overrides_the_specs_so_only_it_is_checked():
    check(TeamGrants(max_priority=Priority.NORMAL), dag(slo={"priority": "critical"}), {"priority": "low"})


def test_the_shared_cache_is_a_grant():
    with pytest.raises(FabricError) as info:
        check(TeamGrants(), dag(cache="shared"))
    assert info.value.where == "nodes[1].cache" and "shared_cache" in info.value.message
    check(TeamGrants(), dag(cache=True))  # its own team's cache needs no grant
    check(TeamGrants(shared_cache=True), dag(cache="shared"))


def test_every_claim_beyond_the_grants_is_listed_at_once():
    with pytest.raises(FabricError) as info:
        check(TeamGrants(), dag(cache="shared", slo={"priority": "critical"}), {"secrets_scope": ["s"]})
    assert {p.where for p in info.value.problems} == {"runtime_params.secrets_scope", "nodes[1].slo.priority",
                                                       "nodes[1].cache"}


@pytest.mark.parametrize(("section", "where"), [
    ({"research": {"max_priorty": "high"}}, "grants.research.max_priorty"),
    ({"research": {"max_priority": "urgent"}}, "grants.research.max_priority"),
    ({"research": {"secrets_scopes": "lake"}}, "grants.research.secrets_scopes"),
    ({"research": {"shared_cache": "yes"}}, "grants.research.shared_cache"),
    ({"research": ["lake"]}, "grants.research"),
    (["research"], "grants"),
])
def test_a_typo_in_the_grants_is_an_error_never_a_silent_grant(section, where):
    with pytest.raises(FabricError) as info:
        parse_grants(section)
    assert info.value.where == where


def test_the_tokens_file_carries_the_grants_beside_the_tokens(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({
        "tokens": [{"team": "research", "sha256": hash_token("t1")}],
        "grants": {"research": {"secrets_scopes": ["lake-ro"], "max_priority": "high", "shared_cache": True},
                   "*": {"max_priority": "low"}}}))
    table = TokenTable.load(path)
    assert table.authenticate("Bearer t1").team == "research"
    assert table.grants("research") == TeamGrants(("lake-ro",), Priority.HIGH, True)
    assert table.grants("trading") == TeamGrants((), Priority.LOW, False)  # the "*" entry


# -- per-team submission ids ----------------------------------------------------------------------------------

def test_a_teams_ids_are_its_own_namespace():
    assert team_submission_id("research", "sub-1") == "research:sub-1"
    assert team_submission_id("research", "research:sub-1") == "research:sub-1"  # sent back as the key: the same
    assert team_submission_id("trading", "research:sub-1") == "trading:research:sub-1"
    odd = team_prefix("Quant Research / EU")  # a name that is not a plain word gets a digest, never a ':'
    assert odd.count(":") == 1 and odd.endswith(":") and odd != team_prefix("Quant Research / US")


def record(submission_id: str, team: str | None) -> SubmissionRecord:
    return SubmissionRecord(submission_id, "p", {}, {}, "h", "r", 0.0, team=team)


def test_team_b_neither_sees_nor_squats_team_as_key():
    store = MemoryStore()
    a_id, existing = claim_id(store, "sub-1", "a", 0.0)
    assert (a_id, existing) == ("a:sub-1", None)
    store.add_submission(record(a_id, "a"))
    b_id, existing = claim_id(store, "sub-1", "b", 0.0)  # no conflict, nothing learned: its own id
    assert (b_id, existing) == ("b:sub-1", None)
    store.add_submission(record(b_id, "b"))
    assert claim_id(store, "sub-1", "a", 0.0)[1].submission_id == "a:sub-1"  # a resubmit finds A's own
    for key in ("sub-1", "a:sub-1"):
        assert team_record(store, key, "a").submission_id == "a:sub-1"
        assert team_record(store, key, "b") is (None if key == "a:sub-1" else store.get_submission("b:sub-1"))


def test_ids_from_before_teams_had_namespaces_keep_working_for_their_team_only():
    store = MemoryStore()
    store.add_submission(record("old-1", "a"))
    assert team_record(store, "old-1", "a").submission_id == "old-1"
    assert team_record(store, "old-1", "b") is None
    assert team_record(store, "old-1", None).submission_id == "old-1"  # admin and Ray callers: plain ids
    assert claim_id(store, "old-1", "a", 0.0)[1].submission_id == "old-1"  # idempotency still finds it
    store.add_submission(record("b:x", "a"))  # a plain id of team a that looks like team b's
    with pytest.raises(ConflictError):
        claim_id(store, "x", "b", 0.0)


def test_no_key_gets_a_generated_id_in_the_teams_namespace_and_long_keys_are_refused():
    submission_id, existing = claim_id(MemoryStore(), None, "research", 0.0)
    assert submission_id.startswith("research:sub-") and existing is None
    with pytest.raises(FabricError) as info:
        claim_id(MemoryStore(), "k" * (MAX_ID_LENGTH - 3), "research", 0.0)
    assert info.value.where == "runtime_params.submission_id"


# -- per-team cache keys --------------------------------------------------------------------------------------

def test_cache_keys_are_per_team_unless_the_node_uses_the_shared_cache():
    content = "c" * 64
    a, b = (namespaced_key(cache_namespace(team, False), content) for team in ("a", "b"))
    assert len({a, b, content}) == 3
    assert namespaced_key(cache_namespace(None, False), content) == content  # work without a team: as before
    assert namespaced_key(cache_namespace("a", True), content) == namespaced_key(cache_namespace("b", True), content)
    assert namespaced_key(cache_namespace("a", True), content) not in (a, b, content)


# -- secrets delivered by the head ----------------------------------------------------------------------------

def test_the_head_reads_only_the_listed_scopes_it_holds(tmp_path):
    (tmp_path / "lake").mkdir()
    (tmp_path / "lake" / "key").write_text("s3cr3t\n")
    (tmp_path / "lake" / "..data").mkdir()  # a Kubernetes Secret volume's own entries
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "key").write_text("not yours")
    assert head_secrets(tmp_path, ["lake", "absent", "../other"]) == {"lake": {"key": "s3cr3t"}}
    assert head_secrets(None, ["lake"]) == {}
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "blob").write_text("x" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(FabricError) as info:
        head_secrets(tmp_path, ["big"])
    assert info.value.code is ErrorCode.TOO_LARGE and "x" * 100 not in str(info.value)


def test_a_delivered_scope_is_read_from_memory_and_an_unlisted_one_never(tmp_path):
    delivered = {"lake": {"key": "from-head"}}
    assert read_secret(None, "lake", "key", ("lake",), delivered) == "from-head"
    with pytest.raises(FabricError, match="not listed"):
        read_secret(None, "lake", "key", (), delivered)
    with pytest.raises(FabricError) as info:
        read_secret(None, "lake", "other", ("lake",), delivered)
    assert info.value.code is ErrorCode.NOT_FOUND
    (tmp_path / "mounted").mkdir()
    (tmp_path / "mounted" / "key").write_text("from-mount")  # not on the head: the worker's own mount
    assert read_secret(tmp_path, "mounted", "key", ("lake", "mounted"), delivered) == "from-mount"


def test_secret_values_are_never_shown_nor_pickled_with_the_call():
    call = NodeCall("s", "p", "n", 1, "python_task", "m:f", {}, (), ("result",), (), "/h", secrets=("lake",),
                    secret_values={"lake": {"key": "s3cr3t-value"}})
    assert "s3cr3t-value" not in repr(call)
    from dataclasses import replace

    assert b"s3cr3t-value" not in pickle.dumps(replace(call, secret_values={}))  # as the backend sends it


def test_a_key_sent_back_as_the_id_it_came_back_as_is_the_same_request():
    from fabric.record.ids import request_hashes

    spec = {"version": 1}
    first, *_ = request_hashes(spec, {"submission_id": "sub-1", "team": "research"})
    again = request_hashes(spec, {"submission_id": "research:sub-1", "team": "research"})
    assert first in again
    from fabric.plan.hashing import digest

    as_given = digest({"spec": spec, "runtime": {"submission_id": "sub-1", "team": "research"}})
    assert as_given in request_hashes(spec, {"submission_id": "sub-1", "team": "research"})  # a record from before
    other_team = request_hashes(spec, {"submission_id": "sub-1", "team": "trading"})
    assert first not in other_team
