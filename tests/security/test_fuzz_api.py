"""Every operation of the OpenAPI document, fuzzed with every schemathesis check
(schemathesis.toml at the repository root: response schema, headers and status
conformance, schema-valid requests accepted and invalid ones refused, 405 with
`Allow`, auth not ignored …) against the app with its real database, storage and
Redis. Rate limits are lifted for the run; each operation gets a bounded number of
cases."""

from __future__ import annotations

import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.app import create_app
from shared.access.quota import QuotaService

CASES_PER_OPERATION = 25


@pytest.fixture
def api_schema(pg_url, s3_endpoint, buckets, svc, emulator):
    s = svc.settings
    quotas = QuotaService(s.redis_url, presign_daily=10_000, user_rate="100000/second",
                          ip_rate="100000/second", tryon_daily=10_000,
                          namespace=f"fuzz-{uuid.uuid4().hex}")
    app = create_app(s, svc, quotas, configure_logs=False)
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
# derandomize: the same cases every run, so a failure is a regression, not a new draw
# (schemathesis can still produce a query "object" that no query string can carry).
@settings(max_examples=CASES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_its_contract(case, token):
    # A user of its own per case: an erasure (DELETE /v1/me) fuzzed earlier must not
    # turn the next presign into a 409.
    headers = {"Authorization": f"Bearer {token(f'fuzzer-{uuid.uuid4().hex[:12]}')}"}
    if case.operation.path == "/v1/webhooks/fal":
        headers = {}
    case.call_and_validate(headers=headers)
