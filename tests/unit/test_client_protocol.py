"""The Ray client and the HTTP client are one protocol: the same methods, parameters, defaults and
annotations, checked with `inspect.signature` (the Ray module is inspected, never started)."""

from __future__ import annotations

import inspect

import pytest

import fabric as fb
from fabric import protocol
from fabric.client import RayClient, RaySubmission
from fabric.connection import connect
from fabric.remote import HttpClient, HttpSubmission

pytestmark = pytest.mark.timeout(60)

# Methods one side has beyond the protocol, each for a reason: the gateway scopes one Ray connection per
# request (for_team) and awaits the registry on its event loop (the *_async ones); an HttpClient holds
# connections to close; the gateway answers a re-run with the registry's whole reply (rerun_reply).
EXTRAS = {RayClient: {"for_team", "submit_async", "rerun_reply"}, RaySubmission: {"status_async"},
          HttpClient: {"close"}, HttpSubmission: set()}


def _members(proto: type) -> set[str]:
    return {name for name, value in vars(proto).items() if callable(value) and not name.startswith("_")}


def _shape(function: object) -> list[tuple[str, object, object, object]]:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    # With postponed annotations every annotation is the source text: equal text, equal type.
    shape = [(p.name, p.kind, p.default, p.annotation) for p in signature.parameters.values()]
    return [*shape, ("return", None, None, signature.return_annotation)]


@pytest.mark.parametrize(("proto", "impls", "core"), [
    (protocol.Client, (RayClient, HttpClient), {"submit", "get", "list", "artifacts", "kill_switch", "ping"}),
    (protocol.Submission, (RaySubmission, HttpSubmission), {"status", "wait", "logs", "artifacts", "cancel"})])
def test_both_clients_have_every_protocol_method_with_identical_signatures(proto: type, impls: tuple,
                                                                             core: set[str]) -> None:
    methods = _members(proto)
    assert core <= methods
    for impl in impls:
        for name in methods:
            assert _shape(getattr(impl, name)) == _shape(getattr(proto, name)), f"{impl.__name__}.{name}"
        public = {n for n, v in vars(impl).items() if callable(v) and not n.startswith("_")}
        assert public - methods == EXTRAS[impl], f"{impl.__name__}: add new methods to fabric/protocol.py"


def test_the_annotations_compared_are_real_types_not_typos() -> None:
    for proto in (protocol.Client, protocol.Submission):
        for name in _members(proto):
            inspect.signature(getattr(proto, name), eval_str=True)  # raises on an unknown name


def test_connect_returns_the_protocol_and_is_the_public_one() -> None:
    assert fb.connect is connect and fb.Client is protocol.Client and fb.Submission is protocol.Submission
    assert inspect.signature(connect).return_annotation == "Client"
    assert inspect.signature(connect, eval_str=True).return_annotation is protocol.Client
    import fabric.client as ray_side

    assert inspect.signature(ray_side.connect, eval_str=True).return_annotation is protocol.Client


def test_an_http_client_satisfies_the_protocol_at_runtime() -> None:
    with HttpClient("http://127.0.0.1:9", None) as client:
        assert isinstance(client, fb.Client)
        assert isinstance(client.get("x", check=False), fb.Submission)


def test_ray_only_keywords_are_refused_over_http() -> None:
    with pytest.raises(TypeError, match="num_cpus"):
        connect("http://127.0.0.1:9", num_cpus=2)
