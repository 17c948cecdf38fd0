"""Every operation of the OpenAPI document, fuzzed with every schemathesis check
(schemathesis.toml at the repository root: response schema, headers and status
conformance, schema-valid requests accepted and invalid ones refused, 405 with
`Allow`, auth not ignored …) against the app with its real database, storage and
Redis, one operation at a time and then along the document's links (create -> read
-> favorite -> delete). Rate limits are lifted for the run; each operation gets a
bounded number of cases.

The draws are derandomized, so that a failure here is a regression and not a new
draw; `FUZZ_EXPLORE=1` draws new cases each run (for hunting, not for CI)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.app import create_app
from shared.access.quota import QuotaService

# Its own CI step (.ci/run, `-m fuzz`): generated inputs take their time.
pytestmark = pytest.mark.fuzz

CASES_PER_OPERATION = 25
SCENARIOS = 50
STEPS_PER_SCENARIO = 8
WEBHOOK = "/v1/webhooks/fal"
DERANDOMIZE = not os.environ.get("FUZZ_EXPLORE")


class FuzzUser:
    """The user the fuzzer acts as: a new one per case and per stateful scenario, so an
    erasure (DELETE /v1/me) fuzzed earlier does not turn what follows into 409s."""

    def __init__(self, token: Callable[[str], str]) -> None:
        self._token = token
        self.renew()

    def renew(self) -> None:
        self.bearer = self._token(f"fuzzer-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def fuzz_user(token: Callable[[str], str]) -> FuzzUser:
    return FuzzUser(token)


@pytest.fixture
def api_schema(pg_url, s3_endpoint, buckets, svc, emulator, fuzz_user):
    s = svc.settings
    quotas = QuotaService(s.redis_url, presign_daily=10_000, user_rate="100000/second",
                          ip_rate="100000/second", tryon_daily=10_000,
                          namespace=f"fuzz-{uuid.uuid4().hex}")
    app = create_app(s, svc, quotas, configure_logs=False)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    schema.config.rate_limit = None  # schemathesis.toml paces a run against real limits


    # Registered as the bearer scheme's credentials, so schemathesis knows them: it
    # does not draw an Authorization header of its own, and its auth checks remove
    # or spoil exactly this one.
    @schema.auth(refresh_interval=None).skip_for(path=WEBHOOK)
    class Bearer:
        def get(self, case: Any, ctx: Any) -> str:
            return fuzz_user.bearer

        def set(self, case: Any, data: str, ctx: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=CASES_PER_OPERATION, deadline=None, derandomize=DERANDOMIZE,
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_its_contract(case, fuzz_user):
    fuzz_user.renew()
    case.call_and_validate()


def test_links_from_create_to_read_to_delete_keep_the_contract(api_schema, fuzz_user):
    answered: set[tuple[str, int]] = set()

    class Scenario(api_schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            fuzz_user.renew()  # one user per scenario: its creates are its to read

        def after_call(self, response: Any, case: Any) -> None:
            answered.add((case.operation.label, response.status_code))

    Scenario.run(settings=settings(max_examples=SCENARIOS, stateful_step_count=STEPS_PER_SCENARIO,
                                   deadline=None, derandomize=DERANDOMIZE,
                                   suppress_health_check=list(HealthCheck)))
    # The links were followed: a created upload was read back. (Which scenarios reach
    # a delete varies with the machine; the plain run of tests/conformance checks the
    # read after a delete too.)
    assert ("GET /v1/uploads/{upload_id}", 200) in answered, sorted(answered)
