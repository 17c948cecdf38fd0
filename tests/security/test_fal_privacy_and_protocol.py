"""Privacy at fal and fal's protocol as fal documents it, against the emulator through
the real fal-client: every submission asks fal to expire its output media soon and
not to keep the payload (and the emulator, like fal, then does so); transient fal
errors are retried whatever name fal gives them; a webhook is matched by its signed
request id and our HMAC token, not by body fields fal may change; result links never
travel through the broker."""

from __future__ import annotations

import hashlib
import json
import ssl
import time
import uuid
from dataclasses import replace
from typing import Any

import httpx
import pytest

from devstack.procs import wait_until
from shared.core.config import Settings
from shared.fal.gateway import FalFailure, FalStatus, classify_completion_error, classify_http
from shared.fal.webhooks import FalWebhookVerifier, job_token
from shared.tryons import completion, submission
from tests.conftest import fixture_bytes
from tests.integration.test_tryons import (
    SpyGateway,
    job_row,
    queued_job,
    ready_job,
    sign_as_fal,
    start_job,
    wait_done,
)
from tests.integration.test_upload_flow import upload_ready

ASTRONAUT = fixture_bytes("astronaut.jpg")


def test_every_submission_asks_fal_to_expire_the_media_and_not_keep_the_payload(
        client, auth, svc, dispatch, emulator):
    spy = svc.fal = SpyGateway(svc.fal)
    _, _, _, job = ready_job(client, auth, svc, dispatch, user="rhea")
    assert job.status == "succeeded"
    (request,) = emulator.stats()["requests"].values()
    assert request["media_expiration_seconds"] == svc.settings.fal_media_expiration_seconds
    assert request["store_io"] is False and request["payload_kept"] is False
    assert spy.options[0]["start_timeout"] > 1


def test_limit_generations_is_asked_for(client, auth, svc, dispatch, emulator, monkeypatch):
    sent: list[dict[str, Any]] = []
    real = svc.fal.submit

    def spy(arguments: dict[str, Any], hook: str | None, **options: Any) -> str:
        sent.append(arguments)
        return real(arguments, hook, **options)

    monkeypatch.setattr(svc.fal, "submit", spy)
    ready_job(client, auth, svc, dispatch, user="rhea")
    assert sent[0]["limit_generations"] is True and sent[0]["num_images"] == 1


def test_fal_deletes_the_media_and_the_result_when_asked_while_our_copy_stays(
        client, auth, svc, dispatch, emulator):
    svc.settings = replace(svc.settings, fal_media_expiration_seconds=5)
    emulator.configure(result_retention_seconds=3)
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="sia")
    assert job.status == "succeeded"
    (request_id, request), = emulator.stats()["requests"].items()
    media = f"{emulator.base_url}/media/{request_id}-0.jpg"
    trust = ssl.create_default_context(cafile=str(emulator.ca_path))
    assert httpx.get(media, verify=trust).status_code == 200
    assert wait_until(lambda: emulator.stats()["requests"][request_id]["media_expired"], 10)
    assert httpx.get(media, verify=trust).status_code == 404
    with pytest.raises(FalFailure) as gone:
        svc.fal.result(request_id)
    assert gone.value.status == 404
    body = client.get(f"/v1/try-ons/{job_id}", headers=headers).get_json()
    assert httpx.get(body["resultUrl"], timeout=10).status_code == 200  # ours, private


@pytest.mark.parametrize(("status", "headers", "error_type", "model"), [
    (503, {"X-Fal-Needs-Retry": "true"}, None, None),
    (500, {"x-fal-needs-retry": "TRUE"}, None, None),
    (422, {}, None, "internal_server_error"),
    (422, {}, None, "generation_timeout"),
    (422, {}, None, "downstream_service_error"),
    (422, {}, None, "downstream_service_unavailable"),
])
def test_transient_fal_errors_are_retried_whatever_fal_calls_them(status, headers, error_type,
                                                                  model):
    assert classify_http(status, headers, error_type, model).retriable


@pytest.mark.parametrize("error_type", ["internal_server_error", "generation_timeout",
                                        "downstream_service_error",
                                        "downstream_service_unavailable"])
def test_transient_model_errors_in_a_webhook_are_retried(error_type):
    assert classify_completion_error(error_type).retriable


class CompletedWithError:
    """fal's COMPLETED status naming only a generic error; the result body says which."""

    def __init__(self, real: Any, failure: FalFailure) -> None:
        self.real, self.failure = real, failure

    def status(self, request_id: str) -> FalStatus:
        return FalStatus(True, error="Request failed", error_type=None)

    def result(self, request_id: str) -> Any:
        raise self.failure

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_completed_status_with_an_error_is_classified_from_the_result_body(
        client, auth, svc, dispatch, emulator):
    emulator.configure(job_faults=["never_complete"])
    job_id = queued_job(client, auth, dispatch, "tom")
    submission.run(svc, job_id)
    svc.fal = CompletedWithError(svc.fal, FalFailure("fal.content_policy", False, 422,
                                                     "content_policy_violation"))
    completion.poll(svc, job_id, 1)
    job = job_row(svc, job_id)
    assert (job.status, job.error_code) == ("failed", "fal.content_policy")


def _signed(emulator: Any, request_id: str, body: bytes) -> dict[str, str]:
    from devstack.fal_emulator import load_signing_key

    ts = str(int(time.time()))
    message = f"{request_id}\nfal-user\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": "fal-user",
            "X-Fal-Webhook-Timestamp": ts,
            "X-Fal-Webhook-Signature": load_signing_key(emulator.state_dir).sign(message).hex()}


def test_a_webhook_whose_body_names_other_ids_is_taken_by_its_signed_request_id(
        client, auth, svc, dispatch, emulator, live_api):
    emulator.configure(webhook_mode="none")
    headers = auth("uma")
    upload = upload_ready(client, headers, ASTRONAUT)
    job_id = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    dispatch.run_due(lambda: job_row(svc, job_id).fal_request_id is not None, 10)
    request_id = job_row(svc, job_id).fal_request_id
    assert wait_until(lambda: emulator.stats()["requests"][request_id]["status"] == "COMPLETED", 10)
    # After fal retried internally: other ids in the body, the signed header names ours.
    body = json.dumps({"request_id": "gw-retried-1", "gateway_request_id": "gw-retried-2",
                       "status": "OK", "payload": None}).encode()
    token = job_token(svc.settings.webhook_secret, job_id, 1)
    response = httpx.post(f"{live_api}/v1/webhooks/fal?job={job_id}&attempt=1&token={token}",
                          content=body, headers=sign_as_fal(emulator, request_id, body), timeout=10)
    assert response.status_code == 200
    assert wait_done(svc, dispatch, job_id).status == "succeeded"


def test_result_links_never_travel_through_the_broker(client, auth, svc, dispatch, emulator,
                                                      live_api):
    ready_job(client, auth, svc, dispatch, user="val")
    assert dispatch.count("tryons.complete") >= 1
    for _, args in dispatch.sent:
        assert "://" not in json.dumps(args), args


@pytest.mark.parametrize("jwks", [{"keys": []}, {"keys": [{"kty": "nonsense"}]},
                                  {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}])
def test_a_fal_key_set_with_no_usable_key_is_503_not_500(client, app, svc, jwks):
    app.extensions["hairfluencer"] = replace(app.extensions["hairfluencer"], fal_webhooks=(
        FalWebhookVerifier("https://rest.fal.ai/.well-known/jwks.json", fetch=lambda url: jwks)))
    body = b'{"request_id": "r", "status": "OK", "payload": null}'
    job = str(uuid.uuid4())  # job ids are UUIDs: anything else is refused on the URL
    token = job_token(svc.settings.webhook_secret, job, 1)
    headers = {"X-Fal-Webhook-Request-Id": "r", "X-Fal-Webhook-User-Id": "u",
               "X-Fal-Webhook-Timestamp": str(int(time.time())),
               "X-Fal-Webhook-Signature": "00" * 64}
    response = client.post(f"/v1/webhooks/fal?job={job}&attempt=1&token={token}", data=body,
                           headers=headers)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "service.unavailable"


def test_fal_webhook_keys_come_from_fals_documented_jwks():
    default = next(f.default for f in Settings.__dataclass_fields__.values()
                   if f.metadata.get("env") == "FAL_WEBHOOK_JWKS_URL")
    assert default == "https://rest.fal.ai/.well-known/jwks.json"
