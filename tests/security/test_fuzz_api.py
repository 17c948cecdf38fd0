"""Every operation of the OpenAPI document, fuzzed (schemathesis: generated valid and
invalid bodies, parameters and headers), against the app with its real database,
storage and Redis: zero answers of 500 or more, every error in our envelope.
Rate limits are lifted for the run; each operation gets a bounded number of cases."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

CASES_PER_OPERATION = 25


@pytest.fixture
def api_schema(pg_url, s3_endpoint, buckets, svc, emulator):
    import uuid

    from api.app import create_app
    from shared.access.quota import QuotaService

    s = svc.settings
    quotas = QuotaService(s.redis_url, presign_daily=10_000, user_rate="100000/second",
                          ip_rate="100000/second", tryon_daily=10_000,
                          namespace=f"fuzz-{uuid.uuid4().hex}")
    app = create_app(s, svc, quotas, configure_logs=False)
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=CASES_PER_OPERATION, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx(case, token):
    response = case.call(headers={"Authorization": f"Bearer {token('fuzzer')}"})
    assert response.status_code < 500, (case.method, case.path, response.status_code,
                                        response.text[:300])
    if response.status_code >= 400 and response.status_code != 304:
        body = response.json()
        assert set(body["error"]) >= {"code", "messageKey", "message", "retriable"}
