"""Two doors fal uses to reach us, and their abuse. The result URL a completion names
is fetched by our worker: only fal's media hosts, over HTTPS, no redirects (no SSRF).
The webhook is unauthenticated HTTP: it needs our HMAC token for the job and attempt
and fal's Ed25519 signature, recent, over exactly this body."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import httpx
import pytest

from shared.core.media_hosts import MediaHosts
from shared.fal.completions import Completion
from shared.fal.gateway import FalFailure
from shared.fal.webhooks import job_token
from shared.tryons import completion, result_download, submission
from tests.conftest import fixture_bytes
from tests.integration.test_tryons import job_row, queued_job, sign_as_fal, start_job
from tests.integration.test_upload_flow import upload_ready

ASTRONAUT = fixture_bytes("astronaut.jpg")
FAL = MediaHosts.parse("fal.media,*.fal.media")


@pytest.mark.parametrize("url", [
    "https://fal.media/files/x.jpg", "https://v3.fal.media/files/x.jpg",
    "https://v3b.fal.media/files/x.jpg", "https://FAL.MEDIA/x.jpg",
    "https://fal.media:443/x.jpg",
])
def test_fal_media_urls_pass(url):
    assert FAL.allows(url)


@pytest.mark.parametrize("url", [
    "http://fal.media/files/x.jpg",  # not HTTPS
    "https://fal.media@evil.example/x.jpg",  # user info: the host is evil.example
    "https://evil.example@fal.media/x.jpg",  # user info at all
    "https://fal.media.evil.example/x.jpg",
    "https://evilfal.media/x.jpg",
    "https://169.254.169.254/latest/meta-data/",  # cloud metadata
    "https://127.0.0.1/x.jpg", "https://[::1]/x.jpg", "https://10.0.0.7/x.jpg",
    "https://fal.media:8443/x.jpg",  # another port
    "https://localhost/x.jpg", "file:///etc/passwd", "gopher://fal.media/x",
    "https:///x.jpg", "https://fal.media:notaport/x", "//fal.media/x.jpg", "",
])
def test_everything_else_is_refused(url):
    assert not FAL.allows(url)


def test_an_exact_host_with_its_port_is_the_only_way_to_allow_one():
    local = MediaHosts.parse("127.0.0.1:8443")
    assert local.allows("https://127.0.0.1:8443/media/x.jpg")
    assert not local.allows("https://127.0.0.1/media/x.jpg")
    assert not local.allows("https://127.0.0.1:9000/media/x.jpg")


class Recorder:
    """A media client that records what it was asked for instead of going out."""

    def __init__(self, status: int = 302, headers: dict[str, str] | None = None) -> None:
        self.requests: list[str] = []
        self.status, self.headers = status, headers or {"Location": "http://169.254.169.254/"}

    def client(self) -> httpx.Client:
        def handler(request: httpx.Request) -> httpx.Response:
            self.requests.append(str(request.url))
            return httpx.Response(self.status, headers=self.headers)

        return httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=False)


@pytest.fixture
def media(monkeypatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(result_download, "_media_client", recorder.client)
    return recorder


def test_a_result_url_outside_the_allow_list_is_never_fetched(client, auth, svc, dispatch,
                                                             emulator, media):
    emulator.configure(job_faults=["never_complete"])
    job_id = queued_job(client, auth, dispatch, "xia")
    submission.run(svc, job_id)
    evil = ("https://fal.media@169.254.169.254/latest/meta-data/",)
    completion.complete(svc, job_id, 1, Completion(True, job_row(svc, job_id).fal_request_id, evil))
    job = job_row(svc, job_id)
    assert (job.status, job.error_code) == ("failed", "fal.bad_result")
    assert media.requests == []


def test_a_redirect_from_a_media_host_is_not_followed(svc, media):
    allowed = f"https://{next(iter(svc.settings.media_hosts.exact))}/media/x.jpg"
    with pytest.raises(FalFailure) as refused:
        result_download.download_result(svc, allowed)
    assert (refused.value.code, refused.value.retriable) == ("fal.bad_result", False)
    assert media.requests == [allowed]  # one request; the Location was not visited


# --- webhooks -------------------------------------------------------------------------

def _sign(emulator: Any, request_id: str, body: bytes, ts: int) -> dict[str, str]:
    from devstack.fal_emulator import load_signing_key

    message = f"{request_id}\nfal-user\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": "fal-user",
            "X-Fal-Webhook-Timestamp": str(ts),
            "X-Fal-Webhook-Signature": load_signing_key(emulator.state_dir).sign(message).hex()}


@pytest.fixture
def waiting_job(client, auth, svc, dispatch, emulator) -> tuple[str, str]:
    emulator.configure(job_faults=["never_complete"], webhook_mode="none")
    headers = auth("yan")
    upload = upload_ready(client, headers, ASTRONAUT)
    job_id = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    dispatch.run_due(lambda: job_row(svc, job_id).fal_request_id is not None, 10)
    return job_id, job_row(svc, job_id).fal_request_id


def _post(client, job_id: str, attempt: int, token: str, body: bytes, headers: dict[str, str]):
    return client.post(f"/v1/webhooks/fal?job={job_id}&attempt={attempt}&token={token}",
                       data=body, headers={"Content-Type": "application/json", **headers})


def test_forged_stale_misaddressed_and_oversized_webhooks_are_refused(client, svc, dispatch,
                                                                     emulator, waiting_job):
    job_id, request_id = waiting_job
    body = json.dumps({"request_id": request_id, "status": "ERROR",
                       "payload": {"detail": [{"type": "content_policy_violation"}]}}).encode()
    now = int(time.time())
    secret = svc.settings.webhook_secret
    good = job_token(secret, job_id, 1)
    signed = sign_as_fal(emulator, request_id, body, now)
    cases = {
        "bad signature": (1, good, body, {**signed, "X-Fal-Webhook-Signature": "ab" * 64}),
        "signature not hex": (1, good, body, {**signed, "X-Fal-Webhook-Signature": "zz"}),
        "body changed after signing": (1, good, body.replace(b"ERROR", b"OK"), signed),
        "stale timestamp (a replay)": (1, good, body, sign_as_fal(emulator, request_id, body, now - 400)),
        "from the future": (1, good, body, sign_as_fal(emulator, request_id, body, now + 400)),
        "timestamp not a number": (1, good, body, {**signed, "X-Fal-Webhook-Timestamp": "soon"}),
        "no signature headers": (1, good, body, {}),
        "wrong attempt's token": (2, good, body, signed),
        "token of another job": (1, job_token(secret, "another-job", 1), body, signed),
        "no token": (1, "", body, signed),
        "non-ASCII token": (1, "ñ" * 64, body, signed),
    }
    for name, (attempt, token, payload, headers) in cases.items():
        response = _post(client, job_id, attempt, token, payload, headers)
        assert response.status_code == 401, name
        assert response.get_json()["error"]["code"] == "webhook.invalid", name
    big = b'{"padding": "' + b"x" * 3_000_000 + b'"}'
    response = _post(client, job_id, 1, good, big, sign_as_fal(emulator, request_id, big, now))
    assert response.status_code == 413
    assert dispatch.count("tryons.complete") == 0
    assert job_row(svc, job_id).status == "processing"


def test_a_replayed_delivery_and_one_for_an_unknown_request_change_nothing(
        client, svc, dispatch, emulator, waiting_job):
    job_id, request_id = waiting_job
    token = job_token(svc.settings.webhook_secret, job_id, 1)
    now = int(time.time())
    # fal's signature over another request's delivery, sent with this job's token
    other = json.dumps({"request_id": "unknown-request", "status": "ERROR",
                        "payload": {"detail": [{"type": "content_policy_violation"}]}}).encode()
    assert _post(client, job_id, 1, token, other,
                 sign_as_fal(emulator, "unknown-request", other, now)).status_code == 200
    assert job_row(svc, job_id).status == "processing"
    # the genuine delivery, twice (fal retries deliveries; an attacker may replay one)
    body = json.dumps({"request_id": request_id, "status": "ERROR",
                       "payload": {"detail": [{"type": "content_policy_violation"}]}}).encode()
    signed = sign_as_fal(emulator, request_id, body, now)
    for _ in range(2):
        assert _post(client, job_id, 1, token, body, signed).status_code == 200
    job = job_row(svc, job_id)
    assert (job.status, job.error_code) == ("failed", "fal.content_policy")
    from sqlalchemy import func, select

    from shared.models import AuditEvent

    with svc.sessions() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.subject_id == job_id, AuditEvent.action == "tryon.failed")) == 1
