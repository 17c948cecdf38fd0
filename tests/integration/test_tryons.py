"""Try-on jobs end to end against the fal emulator through the real fal-client,
with real PostgreSQL, Redis and LocalStack S3: polling and webhook completion,
every fault the emulator can inject, forged/duplicate webhooks, deadlines,
idempotency, ETags, favorites, deletion and the reconciler."""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat
from sqlalchemy import select

from shared.core.i18n import MESSAGES
from shared.core.task_names import VALIDATE_UPLOAD
from shared.models import AuditEvent, TryOn, Upload
from shared.storage.base import ObjectMissing
from shared.tryons import reconcile, state, submission
from tests.conftest import assert_no_secrets, fixture_bytes
from tests.integration.test_upload_flow import upload_ready

ASTRONAUT = fixture_bytes("astronaut.jpg")


class SpyGateway:
    """The real gateway, with the input URLs of each submit remembered."""

    def __init__(self, real: Any) -> None:
        self.real, self.inputs, self.options = real, [], []

    def submit(self, arguments: dict[str, Any], webhook_url: str | None, **options: Any) -> str:
        self.inputs.append((time.time(), arguments["image_urls"]))
        self.options.append(options)
        return self.real.submit(arguments, webhook_url, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def spy(svc) -> SpyGateway:
    svc.fal = SpyGateway(svc.fal)
    return svc.fal


def assert_fresh_sanitized_links(inputs: list[tuple[float, list[str]]], upload_id: str) -> None:
    from datetime import UTC, datetime
    from urllib.parse import parse_qs, urlsplit

    assert all(len(urls) == 1 for _, urls in inputs), "image_urls holds only the selfie's link"
    for submitted_at, (url,) in inputs:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        # Signed for this attempt (SigV4 dates have one-second resolution), not reused.
        signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=UTC).timestamp()
        assert submitted_at - 2 <= signed_at <= submitted_at
        assert parts.path.endswith(f"/sanitized/{parts.path.split('/')[-2]}/{upload_id}.jpg")
        assert int(query["X-Amz-Expires"][0]) <= 300
        assert query["response-cache-control"] == ["no-store"]


def start_job(client, headers, upload_id: str, **extra: Any):
    body = {"uploadId": upload_id, "hairstyleId": "bob", "locale": "en", **extra}
    return client.post("/v1/try-ons", json=body, headers=headers)


def queued_job(client, auth, dispatch, user: str) -> str:
    """A job whose run message is still "in the queue" (the test runs it)."""
    headers = auth(user)
    upload = upload_ready(client, headers, ASTRONAUT)
    dispatch.run_inline = False
    response = start_job(client, headers, upload["uploadId"])
    dispatch.run_inline = True
    assert response.status_code == 202
    return response.get_json()["jobId"]


def job_row(svc, job_id: str) -> TryOn:
    with svc.sessions() as session:
        return session.get(TryOn, job_id)


def wait_done(svc, dispatch, job_id: str, timeout: float = 30) -> TryOn:
    dispatch.run_due(lambda: job_row(svc, job_id).status in ("succeeded", "failed"), timeout)
    return job_row(svc, job_id)


def ready_job(client, auth, svc, dispatch, user: str = "tina", **extra: Any):
    headers = auth(user)
    upload = upload_ready(client, headers, ASTRONAUT)
    response = start_job(client, headers, upload["uploadId"], **extra)
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["jobId"]
    return headers, upload, job_id, wait_done(svc, dispatch, job_id)


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- the whole way, both completion modes ------------------------------------

def test_polling_mode_end_to_end(client, auth, svc, dispatch, settings, emulator, json_logs,
                                 caplog, spy):
    headers, upload, job_id, job = ready_job(client, auth, svc, dispatch)
    assert job.status == "succeeded", job.error_code
    assert emulator.stats()["submits"] == 1
    body = client.get(f"/v1/try-ons/{job_id}", headers=headers).get_json()
    assert body["status"] == "succeeded" and body["favorite"] is False
    assert body["deleteAfter"] and body["urlsExpireAt"]
    result = _decode(httpx.get(body["resultUrl"], timeout=10).content)
    thumb = _decode(httpx.get(body["thumbnailUrl"], timeout=10).content)
    source = _decode(ASTRONAUT).convert("RGB")
    assert result.size == source.size and max(thumb.size) <= 256
    diff = ImageStat.Stat(ImageChops.difference(result.convert("RGB"), source)).mean
    assert max(diff) > 5, "the result is not visibly edited"
    # stored under the user's prefix in the processed bucket, tagged temporary
    assert job.result_key == f"results/tina/{job_id}.jpg"
    tags = svc.storage.client.get_object_tagging(Bucket=settings.processed_bucket,
                                                 Key=job.result_key)["TagSet"]
    assert {"Key": "retention", "Value": "temporary"} in tags
    with svc.sessions() as session:
        upload_row = session.get(Upload, upload["uploadId"])
        events = {e.action: e.details for e in session.scalars(
            select(AuditEvent).where(AuditEvent.subject_id == job_id))}
    assert events["tryon.invoked"]["source_sha256"] == upload_row.sanitized_sha256
    assert events["tryon.succeeded"]["result_sha256"] == job.result_sha256
    # the URL fal got was a short-lived, no-store GET of the *sanitized* copy
    assert_fresh_sanitized_links(spy.inputs, upload["uploadId"])
    assert_no_secrets(json_logs, caplog)


def test_webhook_mode_end_to_end(client, auth, svc, dispatch, emulator, live_api, settings):
    _, _, job_id, job = ready_job(client, auth, svc, dispatch, user="uma")
    assert job.status == "succeeded"
    for key in (job.result_key, job.thumbnail_key):
        assert key.startswith("results/uma/")
        _decode(svc.storage.get_bytes(settings.processed_bucket, key, max_bytes=10**7))
    stats = emulator.stats()
    assert stats["submits"] == 1 and stats["webhooks_sent"] >= 1
    assert dispatch.count("tryons.poll") == 0  # completion came by webhook
    assert dispatch.count("tryons.complete") >= 1


@pytest.mark.parametrize("mode", ["duplicate", "early", "late"])
def test_duplicate_early_and_late_webhooks_are_harmless(client, auth, svc, dispatch, emulator,
                                                        live_api, mode):
    emulator.configure(webhook_mode=mode, webhook_late_seconds=0.5)
    _, _, job_id, job = ready_job(client, auth, svc, dispatch, user="vera")
    assert job.status == "succeeded"
    time.sleep(0.8)  # let a duplicate or late delivery arrive
    with svc.sessions() as session:
        succeeded = list(session.scalars(select(AuditEvent).where(
            AuditEvent.subject_id == job_id, AuditEvent.action == "tryon.succeeded")))
    assert len(succeeded) == 1
    assert emulator.stats()["submits"] == 1


# --- webhooks that must be refused -------------------------------------------------

def _post_webhook(base: str, query: str, body: bytes, headers: dict[str, str]):
    return httpx.post(f"{base}/v1/webhooks/fal?{query}", content=body, headers=headers,
                      timeout=10)


def test_forged_and_misdirected_webhooks_are_refused(client, auth, svc, dispatch, emulator,
                                                     live_api):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from shared.fal.webhooks import job_token

    emulator.configure(job_faults=["never_complete"])
    headers = auth("walt")
    upload = upload_ready(client, headers, ASTRONAUT)
    job_id = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    secret = svc.settings.webhook_secret
    body = json.dumps({"request_id": "r", "status": "OK",
                       "payload": {"images": [{"url": "https://evil.test/x.jpg"}]}}).encode()
    ts = str(int(time.time()))
    forged_key = Ed25519PrivateKey.generate()
    message = f"r\nu\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    signed = {"X-Fal-Webhook-Request-Id": "r", "X-Fal-Webhook-User-Id": "u",
              "X-Fal-Webhook-Timestamp": ts,
              "X-Fal-Webhook-Signature": forged_key.sign(message).hex()}
    good_token = job_token(secret, job_id, 1)
    cases = {
        "bad token": (f"job={job_id}&attempt=1&token=deadbeef", signed),
        "other attempt": (f"job={job_id}&attempt=2&token={good_token}", signed),
        "forged signature": (f"job={job_id}&attempt=1&token={good_token}", signed),
        "no signature": (f"job={job_id}&attempt=1&token={good_token}", {}),
        "stale": (f"job={job_id}&attempt=1&token={good_token}",
                  {**signed, "X-Fal-Webhook-Timestamp": str(int(time.time()) - 3600)}),
    }
    for name, (query, hdrs) in cases.items():
        response = _post_webhook(live_api, query, body, {**hdrs, "Accept-Language": "es"})
        assert response.status_code == 401, name
        error = response.json()["error"]
        assert error["code"] == "webhook.invalid"
        assert error["message"] == MESSAGES["webhook.invalid"]["es"]
    assert job_row(svc, job_id).status == "processing"
    assert dispatch.count("tryons.complete") == 0


# --- retry policy: the emulator's submit counter proves one request per attempt ---------

@pytest.mark.parametrize("fault", ["429", "500_internal", "503_runner", "504_startup",
                                   "retryable_header", "malformed"])
def test_retriable_submit_failure_is_retried_with_a_fresh_url(client, auth, svc, dispatch,
                                                              emulator, fault, json_logs,
                                                              caplog, spy):
    emulator.configure(submit_faults=[fault])
    _, upload, job_id, job = ready_job(client, auth, svc, dispatch, user="xena")
    assert job.status == "succeeded", job.error_code
    assert job.attempt == 2
    assert emulator.stats()["submits"] == 2
    assert len(spy.inputs) == 2
    assert_fresh_sanitized_links(spy.inputs, upload["uploadId"])
    assert_no_secrets(json_logs, caplog)


def test_retries_are_bounded(client, auth, svc, dispatch, emulator, json_logs, caplog):
    emulator.configure(submit_faults=["503_runner"] * 10)
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="yuri")
    assert job.status == "failed" and job.error_code == "fal.unavailable"
    assert emulator.stats()["submits"] == 4  # one try and three retries
    for locale in ("en", "es"):
        error = client.get(f"/v1/try-ons/{job_id}?locale={locale}", headers=headers).get_json()[
            "error"]
        assert error["message"] == MESSAGES["fal.unavailable"][locale] and error["retriable"]
    assert_no_secrets(json_logs, caplog)


@pytest.mark.parametrize(("fault", "code"), [
    ("400", "fal.rejected"), ("401", "fal.unauthorized"), ("403", "fal.unauthorized"),
    ("404", "fal.rejected"), ("422_content_policy", "fal.content_policy"),
    ("504_request_timeout", "fal.timeout"),
])
def test_non_retriable_submit_failure_fails_at_once(client, auth, svc, dispatch, emulator,
                                                    fault, code, json_logs, caplog):
    emulator.configure(submit_faults=[fault])
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="zoe")
    assert (job.status, job.error_code) == ("failed", code)
    assert emulator.stats()["submits"] == 1
    for locale in ("en", "es"):
        body = client.get(f"/v1/try-ons/{job_id}?locale={locale}", headers=headers).get_json()
        assert body["error"]["code"] == code
        assert body["error"]["message"] == MESSAGES[code][locale]
        assert "X-Amz" not in json.dumps(body)
    assert_no_secrets(json_logs, caplog)


@pytest.mark.parametrize(("fault", "status", "code", "submits"), [
    ("content_policy", "failed", "fal.content_policy", 1),
    ("no_media", "failed", "fal.no_result", 1),
    ("error_internal", "succeeded", None, 2),
    ("malformed_result", "failed", "fal.bad_result", 1),
    ("garbage_result", "failed", "fal.bad_result", 1),
])
@pytest.mark.parametrize("completion", ["poll", "webhook"])
def test_job_faults(request, client, auth, svc, dispatch, emulator, fault, status, code,
                    submits, completion, json_logs, caplog):
    if completion == "webhook":
        request.getfixturevalue("live_api")
    emulator.configure(job_faults=[fault])
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="abe")
    assert (job.status, job.error_code) == (status, code)
    assert emulator.stats()["submits"] == submits
    if code:
        for locale in ("en", "es"):
            error = client.get(f"/v1/try-ons/{job_id}?locale={locale}",
                               headers=headers).get_json()["error"]
            assert (error["code"], error["message"]) == (code, MESSAGES[code][locale])
    assert_no_secrets(json_logs, caplog)


def test_deadline_cancels_the_fal_request(client, auth, svc, dispatch, emulator):
    svc.settings = replace(svc.settings, fal_deadline_seconds=1)
    emulator.configure(job_faults=["never_complete"])
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="bea")
    assert (job.status, job.error_code) == ("failed", "fal.timeout")
    assert emulator.stats()["cancels"] == 1
    body = client.get(f"/v1/try-ons/{job_id}", headers=auth("bea", Accept_Language="es")
                      ).get_json()
    assert body["error"]["message"] == MESSAGES["fal.timeout"]["es"]


# --- the job waits for its upload -----------------------------------------------------

def _validating_upload(client, headers, dispatch) -> str:
    from tests.integration.test_upload_flow import presign, put

    dispatch.run_inline = False  # the validation task stays "in the queue"
    issued = presign(client, headers, ASTRONAUT).get_json()
    assert put(issued, ASTRONAUT).status_code == 200
    assert client.post("/v1/uploads/confirm", headers=headers,
                       json={"key": issued["key"]}).status_code == 202
    dispatch.run_inline = True
    return issued["uploadId"]


def test_job_waits_for_validation_then_runs(client, auth, svc, dispatch, emulator):
    headers = auth("cai")
    upload_id = _validating_upload(client, headers, dispatch)
    job_id = start_job(client, headers, upload_id).get_json()["jobId"]
    dispatch.run_due(lambda: dispatch.count("tryons.run") >= 3, timeout=10)
    assert job_row(svc, job_id).status == "queued"
    assert emulator.stats()["submits"] == 0
    dispatch.run_task(VALIDATE_UPLOAD, upload_id)
    assert wait_done(svc, dispatch, job_id).status == "succeeded"


def test_job_gives_up_on_an_upload_that_never_validates(client, auth, svc, dispatch, emulator):
    svc.settings = replace(svc.settings, upload_wait_seconds=1)
    headers = auth("dan")
    upload_id = _validating_upload(client, headers, dispatch)
    job_id = start_job(client, headers, upload_id).get_json()["jobId"]
    job = wait_done(svc, dispatch, job_id)
    assert (job.status, job.error_code) == ("failed", "upload.not_ready")
    assert emulator.stats()["submits"] == 0


def test_job_on_a_rejected_upload_fails(client, auth, svc, dispatch, emulator):
    headers = auth("eve")
    upload_id = _validating_upload(client, headers, dispatch)
    job_id = start_job(client, headers, upload_id).get_json()["jobId"]
    with svc.sessions.begin() as session:
        session.get(Upload, upload_id).status = "rejected"
    job = wait_done(svc, dispatch, job_id)
    assert (job.status, job.error_code) == ("failed", "upload.rejected")
    response = start_job(client, headers, upload_id)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "upload.rejected"


# --- API contract -----------------------------------------------------------------------

def test_another_users_job_is_404(client, auth, svc, dispatch):
    _, _, job_id, _ = ready_job(client, auth, svc, dispatch, user="fay")
    for method in ("get", "delete"):
        response = getattr(client, method)(f"/v1/try-ons/{job_id}", headers=auth("gus"))
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "tryon.not_found"
    response = client.put(f"/v1/try-ons/{job_id}/favorite", headers=auth("gus"))
    assert response.status_code == 404
    upload = upload_ready(client, auth("fay"), ASTRONAUT)
    response = start_job(client, auth("gus"), upload["uploadId"])
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "upload.not_found"
    assert job_row(svc, job_id).status == "succeeded"


def test_bad_try_on_requests(client, auth):
    headers = auth("hal")
    upload = upload_ready(client, headers, ASTRONAUT)
    cases = [
        ({"uploadId": upload["uploadId"], "hairstyleId": "mohawk-9000"}, 422,
         "tryon.unknown_hairstyle"),
        ({"hairstyleId": "bob"}, 422, "request.invalid"),
        ({"uploadId": upload["uploadId"], "key": upload["key"], "hairstyleId": "bob"}, 422,
         "request.invalid"),
        ({"uploadId": upload["uploadId"], "hairstyleId": "bob", "prompt": "x" * 201}, 422,
         "request.invalid"),
        ({"uploadId": upload["uploadId"], "hairstyleId": "bob", "locale": "fr"}, 422,
         "request.invalid"),
    ]
    for body, status, code in cases:
        response = client.post("/v1/try-ons", json=body, headers=auth("hal", Accept_Language="es"))
        assert response.status_code == status, body
        assert response.get_json()["error"]["code"] == code
        assert response.get_json()["error"]["message"] == MESSAGES[code]["es"]


def test_idempotency_key(client, auth, svc, dispatch):
    headers = auth("ida")
    upload = upload_ready(client, headers, ASTRONAUT)
    keyed = {**headers, "Idempotency-Key": "tap-123"}
    first = start_job(client, keyed, upload["uploadId"])
    again = start_job(client, keyed, upload["uploadId"])
    assert first.status_code == again.status_code == 202
    assert first.get_json() == again.get_json()
    other = start_job(client, keyed, upload["uploadId"], hairstyleId="pixie-cut")
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "idempotency.conflict"
    with svc.sessions() as session:
        jobs = list(session.scalars(select(TryOn).where(TryOn.user_id == "ida")))
    assert len(jobs) == 1


def test_etag_and_retry_after(client, auth, svc, dispatch, emulator):
    emulator.configure(job_faults=["never_complete"])
    headers = auth("ike")
    upload = upload_ready(client, headers, ASTRONAUT)
    job_id = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    first = client.get(f"/v1/try-ons/{job_id}", headers=headers)
    assert first.status_code == 200 and first.headers["Retry-After"] == "2"
    etag = first.headers["ETag"]
    second = client.get(f"/v1/try-ons/{job_id}", headers={**headers, "If-None-Match": etag})
    assert second.status_code == 304 and second.get_data() == b""
    assert second.headers["ETag"] == etag and second.headers["Retry-After"] == "2"
    # A 304 names the current tag, not whatever If-None-Match held.
    for held in ("*", f'"stale", {etag}'):
        again = client.get(f"/v1/try-ons/{job_id}", headers={**headers, "If-None-Match": held})
        assert again.status_code == 304 and again.headers["ETag"] == etag


def test_etag_of_a_succeeded_job_is_stable_while_its_urls_live(client, auth, svc, dispatch):
    headers, _, job_id, _ = ready_job(client, auth, svc, dispatch, user="jon")
    frozen = svc.clock()
    svc.clock = lambda: frozen  # inside one signing window (SigV4 still signs in real time)
    first = client.get(f"/v1/try-ons/{job_id}", headers=headers)
    time.sleep(1.1)  # SigV4 dates have one-second resolution
    second = client.get(f"/v1/try-ons/{job_id}", headers=headers)
    # The body changes with every signature; the ETag does not.
    assert first.get_json()["resultUrl"] != second.get_json()["resultUrl"]
    assert first.headers["ETag"] == second.headers["ETag"]
    assert client.get(f"/v1/try-ons/{job_id}", headers={
        **headers, "If-None-Match": first.headers["ETag"]}).status_code == 304
    assert client.put(f"/v1/try-ons/{job_id}/favorite", headers=headers).status_code == 200
    changed = client.get(f"/v1/try-ons/{job_id}", headers={
        **headers, "If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200
    # a new signing window means new URLs, so a new ETag
    svc.clock = lambda: frozen + timedelta(seconds=600)
    moved = client.get(f"/v1/try-ons/{job_id}", headers={
        **headers, "If-None-Match": changed.headers["ETag"]})
    assert moved.status_code == 200 and moved.headers["ETag"] != changed.headers["ETag"]


def test_favorite_keeps_the_result(client, auth, svc, dispatch, settings):
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="kay")
    body = client.put(f"/v1/try-ons/{job_id}/favorite", headers=headers).get_json()
    assert body["favorite"] is True and body["deleteAfter"] is None
    tags = svc.storage.client.get_object_tagging(Bucket=settings.processed_bucket,
                                                 Key=job.result_key)["TagSet"]
    assert {"Key": "retention", "Value": "kept"} in tags
    from shared.tryons import retention as tryon_retention
    later = svc.clock() + timedelta(days=30)
    svc.clock = lambda: later
    assert tryon_retention.delete_expired_results(svc) == 0
    body = client.delete(f"/v1/try-ons/{job_id}/favorite", headers=headers).get_json()
    assert body["favorite"] is False and body["deleteAfter"]
    svc.clock = lambda: later + timedelta(days=8)
    assert tryon_retention.delete_expired_results(svc) == 1
    with pytest.raises(ObjectMissing):
        svc.storage.head(settings.processed_bucket, job.result_key)
    assert client.get(f"/v1/try-ons/{job_id}", headers=headers).status_code == 404


def test_delete_job_removes_results_and_cancels_in_flight(client, auth, svc, dispatch, emulator,
                                                          settings):
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="lea")
    assert client.delete(f"/v1/try-ons/{job_id}", headers=headers).status_code == 204
    for key in (job.result_key, job.thumbnail_key):
        with pytest.raises(ObjectMissing):
            svc.storage.head(settings.processed_bucket, key)
    assert client.get(f"/v1/try-ons/{job_id}", headers=headers).status_code == 404

    emulator.configure(job_faults=["never_complete"])
    upload = upload_ready(client, headers, ASTRONAUT)
    in_flight = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    dispatch.run_due(lambda: job_row(svc, in_flight).fal_request_id is not None, 10)
    assert client.delete(f"/v1/try-ons/{in_flight}", headers=headers).status_code == 204
    assert emulator.stats()["cancels"] == 1


def test_list_pages_and_filters(client, auth, svc, dispatch, emulator):
    headers = auth("max")
    upload = upload_ready(client, headers, ASTRONAUT)
    ids = [start_job(client, headers, upload["uploadId"]).get_json()["jobId"] for _ in range(3)]
    for job_id in ids:
        wait_done(svc, dispatch, job_id)
    page = client.get("/v1/try-ons?limit=2", headers=headers).get_json()
    rest = client.get(f"/v1/try-ons?limit=2&cursor={page['nextCursor']}",
                      headers=headers).get_json()
    assert sorted(j["jobId"] for j in page["items"] + rest["items"]) == sorted(ids)
    assert client.get("/v1/try-ons?status=failed", headers=headers).get_json()["items"] == []


def test_try_on_quota(client, auth, quotas, dispatch):
    from limits import parse

    quotas.limits = replace(quotas.limits, tryon_daily=parse("1/day"))
    headers = auth("ned")
    upload = upload_ready(client, headers, ASTRONAUT)
    # invalid requests do not use up the day's try-ons
    assert start_job(client, headers, upload["uploadId"], hairstyleId="nope").status_code == 422
    assert start_job(client, headers, "00000000-0000-4000-8000-000000000000").status_code == 404
    assert start_job(client, headers, upload["uploadId"]).status_code == 202
    response = start_job(client, headers, upload["uploadId"], locale="es")
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert response.get_json()["error"]["message"] == MESSAGES["quota.exceeded"]["es"]


def test_broker_down_at_enqueue_is_reconciled(client, auth, svc, dispatch, emulator):
    headers = auth("ola")
    upload = upload_ready(client, headers, ASTRONAUT)
    dispatch.broker_down = True
    response = start_job(client, headers, upload["uploadId"])
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    dispatch.broker_down = False
    job_id = response.get_json()["jobId"]
    assert state.send(svc, reconcile.reconcile(svc)) == 0  # not stale yet
    real_clock = svc.clock
    svc.clock = lambda: real_clock() + timedelta(seconds=31)
    state.send(svc, reconcile.reconcile(svc))
    svc.clock = real_clock
    assert wait_done(svc, dispatch, job_id).status == "succeeded"
    assert emulator.stats()["submits"] == 1


def test_hairstyles_catalogue(client, auth):
    body = client.get("/v1/hairstyles", headers=auth(Accept_Language="es")).get_json()
    bob = next(s for s in body["items"] if s["id"] == "bob")
    assert bob["name"] == "Bob clásico" and bob["names"]["en"] == "Classic bob"
    assert "prompt" not in bob  # the template stays server-side


# --- webhooks signed with fal's (the emulator's) real key -----------------------------

def sign_as_fal(emulator, request_id: str, body: bytes, ts: int | None = None) -> dict[str, str]:
    """The headers of a webhook delivery signed with fal's (the emulator's) key."""
    from devstack.fal_emulator import load_signing_key

    key = load_signing_key(emulator.state_dir)
    ts = int(time.time()) if ts is None else ts
    message = f"{request_id}\nfal-user\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": "fal-user",
            "X-Fal-Webhook-Timestamp": str(ts),
            "X-Fal-Webhook-Signature": key.sign(message).hex()}


def test_correctly_signed_webhooks_are_still_refused_when_misdirected(
        client, auth, svc, dispatch, emulator, live_api):
    from shared.fal.webhooks import job_token

    emulator.configure(job_faults=["never_complete"], webhook_mode="none")
    headers = auth("pia")
    upload = upload_ready(client, headers, ASTRONAUT)
    job_id = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    dispatch.run_due(lambda: job_row(svc, job_id).fal_request_id is not None, 10)
    request_id = job_row(svc, job_id).fal_request_id
    body = json.dumps({"request_id": request_id, "status": "OK", "payload": {
        "images": [{"url": f"https://127.0.0.1:{emulator.port}/media/none.jpg"}]}}).encode()
    now = int(time.time())
    token = job_token(svc.settings.webhook_secret, job_id, 1)
    good_query = f"job={job_id}&attempt=1&token={token}"
    cases = {
        "bad token": (f"job={job_id}&attempt=1&token={'0' * 64}", now, request_id),
        "another job's token": (f"job={job_id}&attempt=1&token="
                                f"{job_token(svc.settings.webhook_secret, 'other', 1)}",
                                now, request_id),
        "stale": (good_query, now - 310, request_id),
        "from the future": (good_query, now + 310, request_id),
    }
    for name, (query, ts, signed_id) in cases.items():
        response = _post_webhook(live_api, query, body, sign_as_fal(emulator, signed_id, body, ts))
        assert response.status_code == 401, name
    assert dispatch.count("tryons.complete") == 0
    # Genuinely signed by fal, for the right job and attempt, but about another request
    # (fal's request ids in the body need not match the header, so only the signed
    # one counts): taken in (fal must not retry it) and ignored by the worker.
    other = _post_webhook(live_api, good_query, body,
                          sign_as_fal(emulator, "another-request", body, now))
    assert other.status_code == 200
    assert job_row(svc, job_id).status == "processing"
    assert dispatch.count("tryons.complete") == 1
    # and the same delivery, correctly addressed and fresh, is accepted
    ok = _post_webhook(live_api, good_query, body, sign_as_fal(emulator, request_id, body, now))
    assert ok.status_code == 200
    assert dispatch.count("tryons.complete") == 2


def test_a_second_run_never_submits_a_processing_job_again(client, auth, svc, dispatch,
                                                           emulator):
    emulator.configure(job_faults=["never_complete"])
    headers = auth("quin")
    upload = upload_ready(client, headers, ASTRONAUT)
    job_id = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    dispatch.run_due(lambda: job_row(svc, job_id).fal_request_id is not None, 10)
    assert submission.run(svc, job_id) == []  # a duplicate delivery or a reconciler re-send
    assert emulator.stats()["submits"] == 1 and job_row(svc, job_id).attempt == 1


def test_reconciler_rechecks_silent_jobs_and_fails_overdue_ones(client, auth, svc, dispatch,
                                                                emulator, live_api):
    svc.settings = replace(svc.settings, fal_deadline_seconds=120)
    emulator.configure(webhook_mode="none")  # the webhook is lost
    headers = auth("rex")
    upload = upload_ready(client, headers, ASTRONAUT)
    job_id = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    dispatch.run_due(lambda: job_row(svc, job_id).fal_request_id is not None, 10)
    time.sleep(0.5)  # fal finishes; nobody is told
    assert job_row(svc, job_id).status == "processing"
    real_clock = svc.clock
    svc.clock = lambda: real_clock() + timedelta(seconds=31)
    state.send(svc, reconcile.reconcile(svc))
    svc.clock = real_clock
    assert job_row(svc, job_id).status == "succeeded"  # its one status check found the result

    emulator.configure(job_faults=["never_complete"])
    stuck = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    dispatch.run_due(lambda: job_row(svc, stuck).fal_request_id is not None, 10)
    svc.clock = lambda: real_clock() + timedelta(seconds=svc.settings.fal_deadline_seconds + 1)
    state.send(svc, reconcile.reconcile(svc))
    svc.clock = real_clock
    job = job_row(svc, stuck)
    assert (job.status, job.error_code) == ("failed", "fal.timeout")
    assert emulator.stats()["cancels"] == 1


def test_erasure_removes_every_object_and_row_but_keeps_the_audit_trail(
        client, auth, svc, dispatch, settings):
    headers, upload, job_id, job = ready_job(client, auth, svc, dispatch, user="sid")
    other = upload_ready(client, auth("ted"), ASTRONAUT)  # another user's, untouched
    with svc.sessions() as session:
        row = session.get(Upload, upload["uploadId"])
    response = client.delete("/v1/me", headers=headers)
    assert response.status_code == 202
    for bucket, key in ((settings.uploads_bucket, row.key),
                        (settings.uploads_bucket, row.sanitized_key),
                        (settings.processed_bucket, job.result_key),
                        (settings.processed_bucket, job.thumbnail_key)):
        with pytest.raises(ObjectMissing):
            svc.storage.head(bucket, key)
    actions = assert_erased(client, headers, svc, "sid", untouched_upload=other["uploadId"])
    assert {"upload.issued", "tryon.succeeded", "user.erasure_requested",
            "user.erased"} <= set(actions)


def assert_erased(client, headers, svc, user_id: str, *, untouched_upload: str) -> list[str]:
    """The erased user lists nothing, another user's upload is untouched, and the
    audit trail stays: its actions are returned."""
    assert client.get("/v1/uploads", headers=headers).get_json()["items"] == []
    assert client.get("/v1/try-ons", headers=headers).get_json()["items"] == []
    with svc.sessions() as session:
        assert session.get(Upload, untouched_upload).status == "ready"
        return list(session.scalars(select(AuditEvent.action).where(
            AuditEvent.user_id == user_id)))


def test_erasure_with_the_broker_down_is_accepted_and_resumed_by_the_beat(client, auth, svc,
                                                                         dispatch):
    from shared.privacy import erasure
    headers = auth("uli")
    upload = upload_ready(client, headers, ASTRONAUT)
    dispatch.broker_down = True
    response = client.delete("/v1/me", headers=headers)
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "pending" and body["completedAt"] is None
    assert client.get("/v1/me/erasure", headers=headers).get_json() == body
    dispatch.broker_down = False
    assert erasure.resume_unfinished(svc) == 0  # not due yet: its message may be on the way
    real_clock = svc.clock
    svc.clock = lambda: real_clock() + timedelta(seconds=21)
    assert erasure.resume_unfinished(svc) == 1
    svc.clock = real_clock
    done = client.get("/v1/me/erasure", headers=headers).get_json()
    assert (done["erasureId"], done["status"]) == (body["erasureId"], "done")
    assert client.get(f"/v1/uploads/{upload['uploadId']}", headers=headers).status_code == 404
