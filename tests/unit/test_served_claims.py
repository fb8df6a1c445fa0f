"""Served-name claims against the registry's record (fabric/actors/served.py over a MemoryStore): one owner per
name however teams race, a refused submission's claim withdrawn, and only the owner's rows ever change."""

from __future__ import annotations

import pytest

from fabric.actors.served import Guard, ServedMethods, guarded
from fabric.errors import ErrorCode, FabricError
from fabric.record import MemoryStore
from fabric.spec.policy import Principal, ServedName
from fabric.spec.teams import Role, TeamConfig


class Book(ServedMethods):
    """The registry's served-name methods on a store of its own (what a driver reaches with the capability)."""

    def __init__(self) -> None:
        self._store = MemoryStore()


def guard(book: Book, team: str, role: Role = Role.DEVELOPER) -> Guard:
    return Guard(Principal(team, role), TeamConfig(), book)


def test_the_first_team_keeps_a_name_another_team_raced_for() -> None:
    book = Book()
    assert guard(book, "a").claim_all([("m", ServedName("a", 1.0, 1), True)]) == ["m"]
    with pytest.raises(FabricError) as refused:  # b planned its claim before a's landed: refused at claim time
        guard(book, "b").claim_all([("n", ServedName("b"), True), ("m", ServedName("b"), True)])
    assert refused.value.code is ErrorCode.POLICY_DENIED and "serve.owner" in str(refused.value.problems)
    assert book.served_names() == {"m": ServedName("a", 1.0, 1)}  # b's own new claim ("n") was withdrawn too


def test_a_refused_submission_withdraws_only_its_own_claims() -> None:
    book = Book()
    book.claim_served("kept", ServedName("a"))

    def refused_by_the_registry() -> None:
        raise FabricError("no", code=ErrorCode.SPEC_FIELD, where="x", fix="y")

    with pytest.raises(FabricError):
        guarded(guard(book, "a"), [("new", ServedName("a"), True), ("kept", ServedName("a", 2.0, 2), False)],
                refused_by_the_registry)
    assert book.served_names() == {"kept": ServedName("a")}  # "new" withdrawn, "kept" not resized
    assert guarded(guard(book, "a"), [("kept", ServedName("a", 2.0, 2), False)], lambda: {"ok": 1}) == {"ok": 1}
    assert book.served_names()["kept"] == ServedName("a", 2.0, 2)
    assert not book.release_served("kept", "b") and not book.update_served("kept", ServedName("b", 9.0, 9))
    with pytest.raises(FabricError) as bad:
        book.claim_served("../etc", ServedName("a"))
    assert bad.value.where == "name"


def test_an_admin_deploying_another_teams_name_leaves_it_theirs() -> None:
    book = Book()
    book.claim_served("m", ServedName("a"))
    assert guard(book, "ops", Role.ADMIN).claim_all([("m", ServedName("ops"), True)]) == []
    assert book.served_names()["m"].owner == "a"
