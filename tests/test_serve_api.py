"""The API probe: schemathesis against the server's own /openapi.json, over real HTTP.

Bounded and repeatable: a fixed number of examples per operation and generation mode (valid
and invalid requests), from a fixed seed. The checks: no 5xx, every status code and content
type documented, every answer valid against its documented schema.

Cases come from schemathesis' Hypothesis strategies, driven by Hypothesis directly
(schemathesis' pytest plugin needs a private attribute pytest 9 no longer has).
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serve_support import Server

EXAMPLES = 40  # per operation and mode
SEED = 20261130
# The same cases in every run: Hypothesis also draws from the constants of the modules
# imported before (see the conftest fixture), which depend on the tests that ran first.
pytestmark = pytest.mark.usefixtures("fixed_constant_pool")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
OPERATIONS = [
    ("POST", "/invocations"),
    ("GET", "/ping"),
    ("GET", "/stats"),
    ("GET", "/execution-parameters"),
]


@pytest.fixture(scope="module")
def api(server: Server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


def test_every_operation_is_probed(api) -> None:
    # schemathesis leaves out the document's own path, /openapi.json
    found = {(op.ok().method.upper(), op.ok().path) for op in api.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        *[(method, path, GenerationMode.POSITIVE) for method, path in OPERATIONS],
        ("POST", "/invocations", GenerationMode.NEGATIVE),  # the only one with a body
    ],
)
def test_server_keeps_its_openapi_contract(
    api, server: Server, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api[path][method]
    session = requests.Session()

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its case
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode))
    def probe(case) -> None:
        case.call_and_validate(base_url=server.url, session=session, checks=CHECKS, timeout=10)

    try:
        probe()
    finally:
        session.close()
