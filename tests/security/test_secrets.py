"""Secrets never leak: a round trip with a failing storage call (S3 throttling, for
real, through the fault proxy), failing fal calls (an error body that echoes our
signed link, a refused key) and an unhandled error whose message carries a signed
URL and a bearer token leaves none of them — no presigned signature, bearer token,
fal key, webhook token or fal media link — in the logs (rendered and raw), in task
arguments, or in the Sentry events that the real SDK sends to a local endpoint."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.fal.webhooks import job_token
from shared.services import Services
from tests.conftest import assert_no_secrets, fixture_bytes
from tests.faults.s3_proxy import FaultyS3Proxy
from tests.integration.test_tryons import job_row, start_job, wait_done
from tests.integration.test_upload_flow import presign, put, upload_ready
from tests.sentry_inbox import SentryInbox, sentry_in_this_process

ASTRONAUT = fixture_bytes("astronaut.jpg")


@pytest.fixture(scope="session")
def sentry() -> Iterator[SentryInbox]:
    import sentry_sdk

    yield sentry_in_this_process()
    sentry_sdk.flush(timeout=5)
    sentry_sdk.get_client().close()


def test_nothing_secret_reaches_logs_task_arguments_or_sentry(
        client, app, auth, svc, settings, dispatch, emulator, live_api, sentry, json_logs,
        caplog, monkeypatch):
    import sentry_sdk

    headers = auth("zara")
    bearer = headers["Authorization"].split()[1]
    secrets: set[str] = {bearer, svc.settings.fal_key, svc.settings.webhook_secret}

    def remember(url: str) -> None:
        for value in parse_qs(urlsplit(url).query).get("X-Amz-Signature", []):
            secrets.add(value)

    # 1. A selfie, then a storage call that fails for real: S3 throttles (503 SlowDown).
    upload = upload_ready(client, headers, ASTRONAUT)
    proxy = FaultyS3Proxy(int(settings.s3_endpoint_url.rsplit(":", 1)[1])).start()
    throttled = Services.from_settings(replace(settings, s3_endpoint_url=proxy.endpoint_url))
    proxy.slow_down(30)
    issued = presign(client, headers, ASTRONAUT).get_json()
    remember(issued["uploadUrl"])
    assert put(issued, ASTRONAUT).status_code == 200
    services = app.extensions["hairfluencer"]
    app.extensions["hairfluencer"] = replace(services, svc=throttled)
    confirmed = client.post("/v1/uploads/confirm", headers=headers, json={"key": issued["key"]})
    app.extensions["hairfluencer"] = services
    assert confirmed.status_code == 503
    proxy.stop()

    # 2. fal fails: an error body that echoes our signed link back, then a refused key.
    emulator.configure(job_faults=["content_policy"], submit_faults=["401"])
    failed = [start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
              for _ in range(2)]
    for job_id in failed:
        assert wait_done(svc, dispatch, job_id).status == "failed"
        secrets.add(job_token(svc.settings.webhook_secret, job_id, 1))
    # ...and one that succeeds: its result links are fal media URLs and our signed GETs.
    done = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    assert wait_done(svc, dispatch, done).status == "succeeded"
    secrets.add(job_token(svc.settings.webhook_secret, done, 1))
    body = client.get(f"/v1/try-ons/{done}", headers=headers).get_json()
    remember(body["resultUrl"])
    fal_media = [r for r in emulator.stats()["requests"].values() if r["result_status_code"] == 200]
    assert fal_media

    # The beat's passes over all of it (their logs are part of what is checked).
    from shared.privacy import erasure, orphans
    from shared.tryons import reconcile, state
    from shared.tryons import results as result_store
    from shared.uploads import retention
    state.send(svc, reconcile.reconcile(svc))
    retention.resend_stale_validations(svc)
    retention.purge_raw_objects(svc)
    orphans.remove_orphans(svc)
    result_store.repair_tags(svc)
    erasure.resume_unfinished(svc)

    # 3. An unhandled error whose message carries a signed URL and the bearer token.
    def explode(*_: Any, **__: Any) -> None:
        raise RuntimeError(f"boom fetching {body['resultUrl']} with Bearer {bearer}")

    monkeypatch.setattr("shared.uploads.use_cases.get", explode)
    response = client.get(f"/v1/uploads/{upload['uploadId']}", headers=headers)
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal.error"
    assert bearer not in response.get_data(as_text=True)
    sentry_sdk.flush(timeout=10)

    # None of it anywhere.
    assert_no_secrets(json_logs, caplog)
    logs = json_logs.getvalue() + "\n".join(r.getMessage() for r in caplog.records)
    events = sentry.text()
    assert "boom fetching" in events, "the unhandled error reached Sentry"
    task_args = json.dumps(dispatch.sent)
    for secret in secrets:
        for where, text in (("logs", logs), ("Sentry", events), ("task arguments", task_args)):
            assert secret not in text, f"a secret ({secret[:6]}…) in {where}"
    for request_id in fal_media:
        for where, text in (("logs", logs), ("Sentry", events), ("task arguments", task_args)):
            assert f"/media/{request_id}" not in text, f"a fal media link in {where}"
    assert "X-Amz-Signature=" not in events.replace("X-Amz-Signature=[redacted]", "")
    assert job_row(svc, failed[0]).error_code in ("fal.content_policy", "fal.unauthorized")


def test_logs_are_json_lines_even_for_a_failure(json_logs, caplog):
    import logging

    logging.getLogger("shared.test").warning("failed: %s", "https://s3/x?X-Amz-Signature=abc")
    assert_no_secrets(json_logs, caplog=None)
    assert "[redacted]" in json_logs.getvalue()
    with pytest.raises(AssertionError):
        assert_no_secrets(io.StringIO(json.dumps({"m": "?X-Amz-Signature=abc"}) + "\n"))


def test_refusals_at_the_input_boundary_send_no_sentry_event_and_log_no_value(
        client, auth, sentry, json_logs, caplog, monkeypatch):
    """Issue 15: a refusal is the client's mistake, not ours: logged at INFO with the
    field and the class, never the value, and no Sentry event (the control at the end
    shows that an event of ours does arrive)."""
    import sentry_sdk

    def events_since(start: int) -> list[bytes]:
        sentry_sdk.flush(timeout=5)
        return [e for e in sentry.envelopes[start:] if b'"type":"event"' in e]

    start = len(sentry.envelopes)
    headers = auth("sven")
    marker = "CANARY-VALUE"
    json_type = {"Content-Type": "application/json"}
    refusals = [
        client.post("/v1/uploads/presign", data=b"[" * 3000 + b"]" * 3000,
                    headers={**headers, **json_type}),
        client.post("/healthz", data=b"[" * 3000 + b"]" * 3000, headers=json_type),
        client.post("/v1/try-ons", data=json.dumps(
            {"uploadId": str(uuid.uuid4()), "hairstyleId": "bob",
             "prompt": f"{marker}\u0000"}).encode(), headers={**headers, **json_type}),
        client.post("/v1/try-ons", json={"uploadId": str(uuid.uuid4()), "hairstyleId": "bob"},
                    headers={**headers, "Idempotency-Key": marker * 30}),
        client.get(f"/v1/hairstyles?locale={marker}%00", headers=headers),
    ]
    assert [r.status_code for r in refusals] == [422, 405, 422, 422, 422]
    assert events_since(start) == []
    logs = json_logs.getvalue() + "\n".join(r.getMessage() for r in caplog.records)
    assert marker not in logs
    assert "json.prompt" in logs and "headers.Idempotency-Key" in logs

    def explode(*_: Any, **__: Any) -> None:
        raise RuntimeError("an error of ours")

    monkeypatch.setattr("shared.uploads.use_cases.get", explode)
    assert client.get(f"/v1/uploads/{uuid.uuid4()}", headers=headers).status_code == 500
    assert events_since(start), "the control: an unhandled error does reach Sentry"
