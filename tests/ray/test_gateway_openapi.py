"""Schemathesis against the real gateway's OpenAPI, every route, every built-in check: no 5xx, answers as
documented. The gateway runs on Serve over the module's local Ray; requests carry a team (non-admin) token,
so the admin routes are exercised for their 403 and admission stays open."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig

from serve.gateway import api
from tests.reliability.gateway import serve_gateway
from tests.reliability.results import record

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

# A schema-valid request may still be refused for what a schema cannot say: a DAG's graph rules and
# entrypoints, an artifact name outside its root, an id that does not exist (for this team); and hypothesis sends
# faster than a team's write rate, so a documented 429 with Retry-After is a fair answer too.
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422",
                                                                   "429"]}}})
schema = schemathesis.openapi.from_dict(api.openapi(), config=CONFIG)  # what the gateway serves at /openapi.json
load_all_checks()
EVERY_CHECK = CHECKS.get_all()


@pytest.fixture(scope="module")
def gateway(client, tmp_path_factory):
    yield from serve_gateway(tmp_path_factory.mktemp("gateway"), replicas=1)
    _record_the_schemathesis_run()


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_every_route_answers_as_documented_and_never_5xx(case, gateway):
    response = case.call_and_validate(base_url=gateway.url, headers=gateway.headers("research"), checks=EVERY_CHECK,
                                      timeout=60)
    CALLS.append(response.status_code)


CALLS: list[int] = []


def _record_the_schemathesis_run() -> None:
    """At the module's teardown, after every route's run: what was sent and how it was answered."""
    if not CALLS:
        return  # nothing ran (deselected or failed early): nothing to record
    statuses = sorted({str(status) for status in CALLS})
    record("bad_input", "schemathesis: every route of the gateway's OpenAPI, every check", requests=len(CALLS),
           routes=len(list(schema.get_all_operations())), statuses=" ".join(statuses),
           answer="no 5xx; each answer as documented (status, content type, schema, headers)",
           layer="gateway (Serve, loopback)", checks=len(EVERY_CHECK))
