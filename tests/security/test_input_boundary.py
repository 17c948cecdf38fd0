"""Issue 15's classes, from outside, on PostgreSQL (production's engine): JSON that
breaks the parser or a converter, text the database cannot store, crafted cursors,
Idempotency-Keys past their window or their length, and the quota of a request that
fails. Each answer is our envelope, never a 5xx; nothing is charged or written for
a refusal; the logs name the field and the class, never the value."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from limits import parse
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from shared.core.i18n import MESSAGES
from shared.fal.webhooks import job_token
from shared.models import DailyQuota, TryOn, Upload
from tests.conftest import assert_error, fixture_bytes, shift_clock
from tests.integration.test_tryons import sign_as_fal
from tests.integration.test_upload_flow import upload_ready

ASTRONAUT = fixture_bytes("astronaut.jpg")
DEEP = b"[" * 3000 + b"]" * 3000  # the finding: ~6 KB, 3,000 levels
JSON_ROUTES = ("/v1/uploads/presign", "/v1/uploads/confirm", "/v1/try-ons")
MARK = "SECRETVALUE"  # must never reach a log line or an answer


def rows(svc, model: Any, user: str) -> int:
    with svc.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)
                              .where(model.user_id == user)) or 0


def quota_used(svc, user: str, kind: str) -> int:
    with svc.sessions() as session:
        row = session.get(DailyQuota, (user, kind))
    return row.used if row is not None else 0


def post_raw(client, path: str, raw: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return client.post(path, data=raw, headers={**headers, "Content-Type": "application/json"})


@pytest.mark.parametrize("locale", ["en", "es"])
def test_deep_json_is_422_on_every_json_route_and_the_locale_still_counts(
        client, auth, svc, locale, caplog):
    headers = auth("dora", **{"Accept-Language": locale})
    with caplog.at_level(logging.INFO):
        for path in JSON_ROUTES:
            error = assert_error(post_raw(client, path, DEEP, headers), 422, "request.invalid",
                                 locale)
            assert error["details"] == {"json": {"_schema": ["The document is nested too deeply."]}}
        # The error handler reads no body: a 405 and a 401 with the same body are ours too.
        assert_error(post_raw(client, "/healthz", DEEP, {"Accept-Language": locale}), 405,
                     "request.method_not_allowed", locale)
        assert_error(post_raw(client, "/v1/uploads/presign", DEEP, {"Accept-Language": locale}),
                     401, "auth.missing_token", locale)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert rows(svc, Upload, "dora") == 0


def test_deep_json_to_the_webhook_is_401_before_and_422_after_verification(client, svc,
                                                                             emulator):
    # Without our token: refused on the URL, the body is never parsed.
    assert_error(post_raw(client, "/v1/webhooks/fal?job=x&attempt=1&token=y", DEEP, {}), 401,
                 "webhook.invalid")
    job = str(uuid.uuid4())
    query = f"job={job}&attempt=1&token={job_token(svc.settings.webhook_secret, job, 1)}"
    # Our token, fal's signature, and a body past our limits: parsed once, with them.
    response = client.post(f"/v1/webhooks/fal?{query}", data=DEEP,
                           headers={**sign_as_fal(emulator, "req-deep", DEEP),
                                    "Content-Type": "application/json"})
    assert_error(response, 422, "request.invalid")


@pytest.mark.parametrize("raw", [
    b'{"contentType": "image/jpeg", "contentLength": NaN}',
    b'{"contentType": "image/jpeg", "contentLength": Infinity}',
    b'{"contentType": "image/jpeg", "contentLength": 1e999}',
    b'{"contentType": "image/jpeg", "contentLength": ' + b"9" * 5000 + b"}",
    b'{"contentType": "image/jpeg", "contentLength": 99999999999999999999999}',
    b'{"contentType": "image/jpeg", "contentType": "image/png", "contentLength": 10}',
    b'{"contentType": "image/jpeg\\u0000", "contentLength": 10}',
    b'{"contentType": "image/jpeg", "contentLength": 10, "checksum": "\\ud800"}',
    b'{"contentType": "image/jpeg", "contentLength": 10, "locale": "\\udfff"}',
    b'{"contentType": "image/jpeg", "contentLength": 10, "x\\u0000": 1}',
])
def test_presign_bodies_past_our_limits_are_422_and_cost_nothing(client, auth, svc, raw):
    assert_error(post_raw(client, "/v1/uploads/presign", raw, auth("pete")), 422,
                 "request.invalid")
    assert rows(svc, Upload, "pete") == 0 and quota_used(svc, "pete", "presign") == 0


@pytest.mark.parametrize(("prompt", "text_class"), [
    ("with\u0000 bangs", "NUL"), ("lone \ud800 high", "surrogate"),
    ("lone \udfff low", "surrogate"), ("\ufffe", "noncharacter"), ("\uffff", "noncharacter"),
    ("\ufdd0", "noncharacter")])
def test_text_the_database_cannot_store_is_422_naming_the_field_and_costs_no_quota(
        client, auth, svc, quotas, prompt, text_class, caplog):
    quotas.limits = replace(quotas.limits, tryon_daily=parse("1/day"))
    headers = auth("nina")
    upload = upload_ready(client, headers, ASTRONAUT)
    # ensure_ascii: the escapes (a lone surrogate cannot be sent as UTF-8 at all).
    raw = json.dumps({"uploadId": upload["uploadId"], "hairstyleId": "bob",
                      "prompt": f"{MARK} {prompt}"}).encode()
    with caplog.at_level(logging.INFO):
        for _ in range(3):  # each refusal used to charge the day's one try-on, then 500
            error = assert_error(post_raw(client, "/v1/try-ons", raw, headers), 422,
                                 "request.invalid")
            assert error["details"] == {"json": {"prompt": [
                f"Text containing a {text_class} code point cannot be stored."]}}
    assert rows(svc, TryOn, "nina") == 0 and quota_used(svc, "nina", "tryon") == 0
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused and all("json.prompt" in m and MARK not in m for m in refused)
    assert not any(MARK in r.getMessage() for r in caplog.records)
    ok = client.post("/v1/try-ons", json={"uploadId": upload["uploadId"], "hairstyleId": "bob",
                                          "prompt": "with\x07 bangs"}, headers=headers)
    assert ok.status_code == 202, ok.get_json()  # other controls are text: normalized later
    assert quota_used(svc, "nina", "tryon") == 1


@pytest.mark.parametrize("query", [
    "status=%00", "locale=%00", "cursor=%00", "limit=1%00", "x%00=1", "locale=%EF%BF%BE"])
def test_query_text_is_checked_like_a_body(client, auth, query):
    for path in ("/v1/uploads", "/v1/try-ons", "/v1/hairstyles"):
        assert_error(client.get(f"{path}?{query}", headers=auth()), 422, "request.invalid")


def _old_cursor(created: str) -> str:
    raw = json.dumps([created, str(uuid.uuid4())]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("created", [
    "9999-12-31T23:59:59-14:00",  # the finding: past datetime.max once in UTC
    "0001-01-01T00:00:00+14:00",  # before datetime.min once in UTC
    "9999-12-31T23:59:59+00:00", "1969-12-31T23:59:59+00:00"])
def test_old_form_cursors_out_of_range_are_422(client, auth, created):
    for path in ("/v1/uploads", "/v1/try-ons"):
        response = client.get(path, query_string={"cursor": _old_cursor(created)},
                              headers=auth())
        assert_error(response, 422, "request.invalid")


def test_an_idempotency_key_past_its_window_starts_a_new_job(client, auth, svc, dispatch):
    """Redis forgot the key (24 h) before the beat released the row's: the new request
    takes the key over instead of hitting the unique index (was 500, quota charged)."""
    headers = auth("ivan", **{"Idempotency-Key": "tap-1"})
    upload = upload_ready(client, headers, ASTRONAUT)
    body = {"uploadId": upload["uploadId"], "hairstyleId": "bob"}
    first = client.post("/v1/try-ons", json=body, headers=headers)
    assert first.status_code == 202
    svc.idempotency.forget_user("ivan")  # the Redis record expired
    shift_clock(svc, 24 * 3600 + 1)  # past the window; the beat has not run
    again = client.post("/v1/try-ons", json=body, headers=headers)
    assert again.status_code == 202, again.get_json()
    assert again.get_json()["jobId"] != first.get_json()["jobId"]
    # Two jobs; the second is the first of a new day's quota window.
    assert rows(svc, TryOn, "ivan") == 2 and quota_used(svc, "ivan", "tryon") == 1
    replay = client.post("/v1/try-ons", json=body, headers=headers)  # within the new window
    assert replay.get_json()["jobId"] == again.get_json()["jobId"]
    assert quota_used(svc, "ivan", "tryon") == 1


@pytest.mark.parametrize(("key", "message"), [
    ("k" * 256, "Longer than 255 characters."),
    ("caf\u00e9", "Only visible ASCII characters."),
    ("tab\there", "Only visible ASCII characters.")])
def test_a_bad_idempotency_key_is_refused_never_truncated(client, auth, svc, key, message):
    headers = auth("kira")
    upload = upload_ready(client, headers, ASTRONAUT)
    body = {"uploadId": upload["uploadId"], "hairstyleId": "bob"}
    response = client.post("/v1/try-ons", json=body, headers={**headers, "Idempotency-Key": key})
    error = assert_error(response, 422, "request.invalid")
    assert error["details"] == {"headers": {"Idempotency-Key": [message]}}
    assert rows(svc, TryOn, "kira") == 0 and quota_used(svc, "kira", "tryon") == 0


def test_two_long_keys_with_one_prefix_are_two_requests(client, auth, svc):
    headers = auth("lena")
    upload = upload_ready(client, headers, ASTRONAUT)
    body = {"uploadId": upload["uploadId"], "hairstyleId": "bob"}
    prefix = "p" * 250
    ids = {client.post("/v1/try-ons", json=body,
                       headers={**headers, "Idempotency-Key": prefix + tail}).get_json()["jobId"]
           for tail in ("-one", "-two")}
    assert len(ids) == 2


def test_a_request_that_fails_with_a_5xx_costs_no_quota(client, auth, svc, monkeypatch):
    """The charge is counted in the transaction that writes the job: when the write
    fails, both roll back."""
    headers = auth("omar")
    upload = upload_ready(client, headers, ASTRONAUT)
    presigns = quota_used(svc, "omar", "presign")
    from shared.core import audit

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OperationalError("INSERT", {}, Exception("connection dropped"))

    monkeypatch.setattr(audit, "record", broken)
    response = client.post("/v1/try-ons", json={"uploadId": upload["uploadId"],
                                                "hairstyleId": "bob"}, headers=headers)
    assert_error(response, 503, "service.unavailable")
    response = client.post("/v1/uploads/presign", json={"contentType": "image/jpeg",
                                                        "contentLength": 10}, headers=headers)
    assert_error(response, 503, "service.unavailable")
    assert quota_used(svc, "omar", "tryon") == 0
    assert quota_used(svc, "omar", "presign") == presigns
    assert rows(svc, TryOn, "omar") == 0


def test_a_failure_while_building_the_answer_still_gets_the_envelope(client, auth,
                                                                      monkeypatch):
    from api import errors

    def broken(*_args: object, **_kwargs: object) -> str:
        raise RuntimeError("the catalogue of messages is broken")

    monkeypatch.setattr(errors, "translate", broken)
    response = client.get("/v1/uploads/not-a-uuid", headers=auth())
    assert response.status_code == 500
    assert response.get_json()["error"] == {
        "code": "internal.error", "messageKey": "errors.internal.error",
        "message": MESSAGES["internal.error"]["en"], "retriable": True, "correlationId": None}
    assert response.headers["X-Request-ID"]


def test_the_quota_window_and_its_retry_after(client, auth, svc, quotas):
    quotas.limits = replace(quotas.limits, presign_daily=parse("2/day"))
    headers = auth("quin")
    body = {"contentType": "image/jpeg", "contentLength": 10}
    assert [client.post("/v1/uploads/presign", json=body, headers=headers).status_code
            for _ in range(2)] == [201, 201]
    shift_clock(svc, 3600)
    response = client.post("/v1/uploads/presign", json=body, headers=headers)
    assert_error(response, 429, "quota.exceeded")
    assert 23 * 3600 - 5 <= int(response.headers["Retry-After"]) <= 23 * 3600
    assert quota_used(svc, "quin", "presign") == 2  # the refusal rolled its count back
    shift_clock(svc, timedelta(hours=23).total_seconds())
    assert client.post("/v1/uploads/presign", json=body, headers=headers).status_code == 201
    assert quota_used(svc, "quin", "presign") == 1  # a new window


def test_work_committed_before_a_5xx_is_returned_to_the_retry_without_a_second_charge(
        client, auth, svc, monkeypatch):
    """The job committed (it will run: the reconciler sends what was not sent), then the
    request failed: the retry with the same key gets that job, and pays nothing more."""
    headers = auth("rita", **{"Idempotency-Key": "tap-9"})
    upload = upload_ready(client, headers, ASTRONAUT)
    real_dispatch = svc.dispatch

    def broker_fails(*_args: object, **_kwargs: object) -> bool:
        raise OperationalError("PUBLISH", {}, Exception("connection dropped"))

    monkeypatch.setattr(svc, "dispatch", broker_fails)
    body = {"uploadId": upload["uploadId"], "hairstyleId": "bob"}
    assert_error(client.post("/v1/try-ons", json=body, headers=headers), 503,
                 "service.unavailable")
    assert rows(svc, TryOn, "rita") == 1 and quota_used(svc, "rita", "tryon") == 1
    monkeypatch.setattr(svc, "dispatch", real_dispatch)
    retry = client.post("/v1/try-ons", json=body, headers=headers)
    assert retry.status_code == 202
    assert rows(svc, TryOn, "rita") == 1 and quota_used(svc, "rita", "tryon") == 1
