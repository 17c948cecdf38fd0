"""Requests an attacker (or a buggy client) sends: oversized bodies, crafted cursors
and ids, keys that try to leave the caller's prefix, forwarded-for rotation, and the
quota charged for requests that are refused. Each answer is the right status in our
envelope, and nothing is written or charged."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import jwt
import pytest
import yaml
from sqlalchemy import func, select

from shared.access.quota import QuotaService
from shared.fal.webhooks import job_token
from shared.models import Upload
from tests.conftest import DEV_SECRET, assert_error, fixture_bytes

REPO = Path(__file__).resolve().parents[2]
ASTRONAUT = fixture_bytes("astronaut.jpg")
PRESIGN = {"contentType": "image/jpeg", "contentLength": 1000}


def uploads_of(svc, user: str) -> int:
    with svc.sessions() as session:
        return session.scalar(select(func.count()).select_from(Upload)
                              .where(Upload.user_id == user))


@pytest.mark.parametrize("locale", ["en", "es"])
def test_a_body_over_the_limit_is_413_in_our_envelope_on_every_route(client, auth, svc, locale):
    big = {**PRESIGN, "padding": "x" * 3_000_000}
    headers = auth("oscar", **{"Accept-Language": locale})
    for path in ("/v1/uploads/presign", "/v1/uploads/confirm", "/v1/try-ons"):
        assert_error(client.post(path, json=big, headers=headers), 413, "request.too_large", locale)
    token = job_token(svc.settings.webhook_secret, "some-job", 1)
    response = client.post(f"/v1/webhooks/fal?job=some-job&attempt=1&token={token}", json=big,
                           headers={"Accept-Language": locale})
    assert_error(response, 413, "request.too_large", locale)
    assert uploads_of(svc, "oscar") == 0


def strict_client(svc, **limits: object):
    """The app with quotas of the test's choosing."""
    from api.app import create_app

    options: dict = {"presign_daily": 100, "user_rate": "1000/second",
                     "ip_rate": "1000/second", **limits}
    quotas = QuotaService(svc.settings.redis_url, namespace=f"q-{uuid.uuid4().hex}", **options)
    return create_app(svc.settings, svc, quotas, configure_logs=False).test_client(), quotas


def test_a_newline_after_the_user_id_is_401_and_charges_nothing(svc):
    client, _ = strict_client(svc, presign_daily=1)
    token = jwt.encode({"sub": "alice\n", "aud": "hairfluencer-api", "exp": 2_000_000_000},
                       DEV_SECRET, algorithm="HS256")
    response = client.post("/v1/uploads/presign", json=PRESIGN,
                           headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 401, "auth.invalid_token")
    assert uploads_of(svc, "alice\n") == uploads_of(svc, "alice") == 0
    good = jwt.encode({"sub": "alice", "aud": "hairfluencer-api", "exp": 2_000_000_000},
                      DEV_SECRET, algorithm="HS256")
    response = client.post("/v1/uploads/presign", json=PRESIGN,  # the one presign of the day
                           headers={"Authorization": f"Bearer {good}"})
    assert response.status_code == 201


def test_refused_presigns_cost_no_quota(auth, svc):
    client, _ = strict_client(svc, presign_daily=1)
    headers = auth("pia")
    assert_error(client.post("/v1/uploads/presign", headers=headers,
                             json={**PRESIGN, "contentType": "image/gif"}), 415,
                 "upload.unsupported_type")
    assert_error(client.post("/v1/uploads/presign", headers=headers,
                             json={**PRESIGN, "contentLength": 17 * 1024 * 1024}), 413,
                 "upload.too_large")
    assert client.post("/v1/uploads/presign", headers=headers, json=PRESIGN).status_code == 201
    assert_error(client.post("/v1/uploads/presign", headers=headers, json=PRESIGN), 429,
                 "quota.exceeded")


def _cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    _cursor("2026-01-01T00:00:00", str(uuid.uuid4())),  # naive timestamp
    _cursor("2026-01-01T00:00:00+00:00", "not-a-uuid"),
    _cursor("2026-01-01T00:00:00+00:00", 7),
    _cursor("yesterday", str(uuid.uuid4())),
    _cursor("2026-01-01T00:00:00+00:00"),
    base64.urlsafe_b64encode(b"[" * 5000).decode(),
    "%%%", "",
])
def test_crafted_cursors_are_422(client, auth, cursor):
    for path in ("/v1/uploads", "/v1/try-ons"):
        response = client.get(path, query_string={"cursor": cursor}, headers=auth())
        if cursor == "":
            assert response.status_code == 200  # no cursor: the first page
        else:
            assert_error(response, 422, "request.invalid")


@pytest.mark.parametrize("key", [
    "uploads/eve/../alice/" + str(uuid.uuid4()) + ".jpg",
    "uploads/eve%2F..%2Falice/" + str(uuid.uuid4()) + ".jpg",
    "uploads/alice/" + str(uuid.uuid4()) + ".jpg",  # another user's prefix
    "results/eve/" + str(uuid.uuid4()) + ".jpg",  # the results bucket's shape
    "sanitized/eve/" + str(uuid.uuid4()) + ".jpg",
    "uploads/eve/" + str(uuid.uuid4()) + ".jpg\n",
    "uploads/eve/" + "a" * 5000 + ".jpg",
    "/uploads/eve/" + str(uuid.uuid4()) + ".jpg",
])
def test_keys_outside_the_callers_own_issued_uploads_are_403(client, auth, key):
    for path, body in (("/v1/uploads/confirm", {"key": key}),
                       ("/v1/try-ons", {"key": key, "hairstyleId": "bob"})):
        response = client.post(path, json=body, headers=auth("eve"))
        assert response.status_code in (403, 422), (path, response.get_json())
        if response.status_code == 403:
            assert response.get_json()["error"]["code"] == "upload.forbidden_key"


@pytest.mark.parametrize("upload_id", ["../x", "{" + str(uuid.uuid4()) + "}",
                                       "urn:uuid:" + str(uuid.uuid4()),
                                       str(uuid.uuid4()).replace("-", ""), "a" * 3000])
def test_ids_that_are_not_canonical_uuids_are_404(client, auth, upload_id):
    for path, code in ((f"/v1/uploads/{upload_id}", "upload.not_found"),
                       (f"/v1/try-ons/{upload_id}", "tryon.not_found")):
        response = client.get(path, headers=auth())
        assert response.status_code == 404
        # "../x" does not even reach the route: the generic 404, in our envelope too
        assert response.get_json()["error"]["code"] in (code, "request.not_found")


def test_forwarded_for_is_not_trusted_without_a_proxy(auth, svc):
    assert svc.settings.trusted_proxy_count == 0
    client, _ = strict_client(svc, ip_rate="3/minute")
    answers = [client.get("/v1/hairstyles", headers=auth(**{"X-Forwarded-For": f"10.0.0.{n}"}))
               .status_code for n in range(5)]
    assert answers[:3] == [200, 200, 200] and answers[3:] == [429, 429]


def test_compose_trusts_no_forwarded_for_while_the_api_port_is_published():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    env = compose["x-app"]["environment"]
    if compose["services"]["api"].get("ports"):
        assert env["TRUSTED_PROXY_COUNT"] in ("${TRUSTED_PROXY_COUNT:-0}", 0, "0")


def test_an_idempotency_replay_never_repeats_a_signed_url(client, auth, svc, dispatch):
    from tests.integration.test_tryons import wait_done
    from tests.integration.test_upload_flow import upload_ready

    upload = upload_ready(client, auth("ida"), ASTRONAUT)
    request = {"uploadId": upload["uploadId"], "hairstyleId": "bob", "locale": "en"}
    headers = auth("ida", **{"Idempotency-Key": "tap-1"})
    job_id = client.post("/v1/try-ons", json=request, headers=headers).get_json()["jobId"]
    assert wait_done(svc, dispatch, job_id).status == "succeeded"
    svc.idempotency.forget_user("ida")  # Redis lost the record (a restart)
    again = client.post("/v1/try-ons", json=request, headers=headers)
    assert again.status_code == 202 and again.get_json()["jobId"] == job_id  # the job row's key
    assert again.get_json()["resultUrl"]  # fresh, signed now
    replay = client.post("/v1/try-ons", json=request, headers=headers)
    assert replay.status_code == 202 and replay.get_json()["jobId"] == job_id
    assert not {"resultUrl", "thumbnailUrl", "urlsExpireAt"} & set(replay.get_json())
    stored = json.dumps([svc.idempotency._redis.get(k) for k in
                         svc.idempotency._redis.scan_iter(match="*:idem:ida:*")], default=str)
    assert "X-Amz-Signature" not in stored
