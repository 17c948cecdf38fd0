"""Every way an upload request can fail: the status, the stable code, the message
in English and Spanish, what happens to the bytes, and that nothing leaks."""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import replace
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from shared.core.i18n import MESSAGES
from shared.models import AuditEvent, Upload
from shared.storage.base import ObjectMissing
from tests.conftest import assert_error, assert_no_secrets, fixture_bytes
from tests.integration.test_upload_flow import presign, put, sha256_b64

ASTRONAUT = fixture_bytes("astronaut.jpg")


@pytest.fixture(autouse=True)
def _no_secret_in_any_log(json_logs, caplog):
    """Every failure in this module is also checked for signed URLs in the logs."""
    yield
    assert_no_secrets(json_logs, caplog)


def count_uploads(svc) -> int:
    with svc.sessions() as session:
        return session.scalar(select(func.count()).select_from(Upload))


# --- presign ---------------------------------------------------------------

@pytest.mark.parametrize("locale", ["en", "es"])
def test_unsupported_type_is_415(client, auth, svc, locale):
    response = client.post("/v1/uploads/presign", headers=auth(), json={
        "contentType": "image/gif", "contentLength": 10, "locale": locale})
    assert_error(response, 415, "upload.unsupported_type", locale)
    assert count_uploads(svc) == 0


@pytest.mark.parametrize("locale", ["en", "es"])
def test_over_16_mib_is_413(client, auth, svc, locale):
    response = client.post("/v1/uploads/presign", headers=auth(Accept_Language=locale), json={
        "contentType": "image/jpeg", "contentLength": 16 * 1024 * 1024 + 1})
    assert_error(response, 413, "upload.too_large", locale)
    assert count_uploads(svc) == 0


@pytest.mark.parametrize("body", [
    {"contentLength": 10},
    {"contentType": "image/jpeg", "contentLength": "ten"},
    {"contentType": "image/jpeg", "contentLength": 10, "checksum": "not-base64-sha256"},
    {"contentType": "image/jpeg", "contentLength": 0},
    {"contentType": "image/jpeg", "contentLength": 10, "surprise": 1},
])
def test_malformed_presign_is_422(client, auth, svc, body):
    assert_error(client.post("/v1/uploads/presign", headers=auth(), json=body),
                 422, "request.invalid")
    assert count_uploads(svc) == 0


def test_daily_quota_is_429_with_retry_after(app, client, auth, svc, quotas):
    from limits import parse

    quotas.limits = replace(quotas.limits, presign_daily=parse("2/day"))
    for _ in range(2):
        assert presign(client, auth("quentin"), ASTRONAUT).status_code == 201
    for locale in ("en", "es"):
        response = presign(client, auth("quentin"), ASTRONAUT, locale=locale)
        error = assert_error(response, 429, "quota.exceeded", locale)
        assert error["retriable"] is True
        assert 0 < int(response.headers["Retry-After"]) <= 86400
    assert count_uploads(svc) == 2
    # Another user is not affected.
    assert presign(client, auth("rachel"), ASTRONAUT).status_code == 201


def test_ip_rate_counts_each_request_once(client, auth, quotas):
    from limits import parse

    quotas.limits = replace(quotas.limits, ip_rate=parse("4/minute"))
    statuses = [client.get("/v1/uploads", headers=auth(f"user{i}")).status_code for i in range(5)]
    assert statuses == [200, 200, 200, 200, 429]  # four users behind one IP, then the limit


def test_request_rate_is_429(client, auth, quotas):
    from limits import parse

    quotas.limits = replace(quotas.limits, user_rate=parse("3/minute"))
    statuses = [client.get("/v1/uploads", headers=auth("sam")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = client.get("/v1/uploads", headers=auth("sam", Accept_Language="es"))
    assert_error(response, 429, "rate.limited", "es")
    assert int(response.headers["Retry-After"]) >= 1


# --- confirm ---------------------------------------------------------------

def _issued_and_put(client, headers, data=ASTRONAUT) -> dict[str, Any]:
    issued = presign(client, headers, data).get_json()
    assert put(issued, data).status_code == 200
    return issued


def test_confirm_of_another_users_key_is_403(client, auth, svc):
    issued = _issued_and_put(client, auth("alice"))
    for locale in ("en", "es"):
        response = client.post("/v1/uploads/confirm", headers=auth("mallory"),
                               json={"key": issued["key"], "locale": locale})
        assert_error(response, 403, "upload.forbidden_key", locale)
    with svc.sessions() as session:
        assert session.get(Upload, issued["uploadId"]).status == "pending"


def test_confirm_of_a_key_never_issued_is_403(client, auth):
    key = "uploads/alice/00000000-0000-4000-8000-000000000000.jpg"
    assert_error(client.post("/v1/uploads/confirm", headers=auth("alice"), json={"key": key}),
                 403, "upload.forbidden_key")
    traversal = "uploads/alice/../bob/00000000-0000-4000-8000-000000000000.jpg"
    assert_error(client.post("/v1/uploads/confirm", headers=auth("alice"),
                             json={"key": traversal}), 403, "upload.forbidden_key")


def test_confirm_before_the_object_arrived_is_404_retriable(client, auth, svc):
    issued = presign(client, auth(), ASTRONAUT).get_json()
    for locale in ("en", "es"):
        response = client.post("/v1/uploads/confirm", headers=auth(Accept_Language=locale),
                               json={"key": issued["key"]})
        assert assert_error(response, 404, "upload.object_missing", locale)["retriable"]
    # Still confirmable once the bytes are there.
    assert put(issued, ASTRONAUT).status_code == 200
    assert client.post("/v1/uploads/confirm", headers=auth(),
                       json={"key": issued["key"]}).status_code == 202


def test_second_confirm_is_409(client, auth, dispatch):
    issued = _issued_and_put(client, auth())
    first = client.post("/v1/uploads/confirm", headers=auth(), json={"key": issued["key"]})
    assert first.status_code == 202
    for locale in ("en", "es"):
        response = client.post("/v1/uploads/confirm", headers=auth(Accept_Language=locale),
                               json={"key": issued["key"]})
        assert_error(response, 409, "upload.already_confirmed", locale)
    assert [name for name, _ in dispatch.sent] == ["uploads.validate"]


@pytest.mark.parametrize(("plant", "code"), [
    ({"Body": ASTRONAUT + b"extra"}, "upload.size_mismatch"),
    ({"Body": ASTRONAUT, "ContentType": "image/png"}, "upload.type_mismatch"),
    ({"Body": ASTRONAUT[:-3] + b"\0\0\0"}, "upload.checksum_mismatch"),
])
def test_confirm_time_mismatch_is_422_and_bytes_are_removed(client, auth, svc, settings, plant,
                                                            code, json_logs, caplog):
    issued = presign(client, auth("victor"), ASTRONAUT).get_json()
    # A signature-checking URL cannot produce these objects: plant them with the SDK.
    params = {"Bucket": settings.uploads_bucket, "Key": issued["key"],
              "ContentType": "image/jpeg", **plant}
    params["ChecksumSHA256"] = sha256_b64(params["Body"])
    svc.storage.client.put_object(**params)

    response = client.post("/v1/uploads/confirm", headers=auth("victor", Accept_Language="es"),
                           json={"key": issued["key"]})
    assert_error(response, 422, code, "es")
    # The bytes are gone; an empty placeholder keeps the key blocked for the URL's life.
    assert svc.storage.head(settings.uploads_bucket, issued["key"]).size == 0
    assert put(issued, ASTRONAUT).status_code == 412
    body = client.get(f"/v1/uploads/{issued['uploadId']}", headers=auth("victor")).get_json()
    assert body["status"] == "rejected"
    assert body["rejection"] == {"code": code, "messageKey": f"errors.{code}",
                                 "message": MESSAGES[code]["en"]}
    assert_no_secrets(json_logs, caplog)


# --- deep validation (worker) ------------------------------------------------

def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims 900 megapixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    row = b"\0" + b"\0" * width
    compressed = zlib.compress(row * 64, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", compressed) + chunk(b"IEND", b""))


def _polyglot() -> bytes:
    """GIF header + JavaScript: a classic GIF/JS polyglot, sent as image/jpeg."""
    return b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00;*/=alert(document.domain);//" + b"\0" * 64


def _truncated_jpeg() -> bytes:
    return ASTRONAUT[: len(ASTRONAUT) // 2]


def _png_as_jpeg() -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(ASTRONAUT)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(("content_type", "make", "code"), [
    ("image/png", _bomb_png, "upload.too_many_pixels"),
    # No plugin can read the polyglot's GIF part either: nothing to call it but broken.
    ("image/jpeg", _polyglot, "upload.undecodable"),
    ("image/jpeg", _png_as_jpeg, "upload.type_mismatch"),
    ("image/jpeg", lambda: os.urandom(8192), "upload.undecodable"),
    ("image/jpeg", lambda: b"\xff\xd8\xff\xe0" + os.urandom(8192), "upload.undecodable"),
    ("image/jpeg", _truncated_jpeg, "upload.undecodable"),
])
def test_bad_image_is_rejected_by_validation(client, auth, svc, settings, content_type, make,
                                             code, json_logs, caplog):
    data = make()
    headers = auth("wendy")
    issued = presign(client, headers, data, content_type=content_type).get_json()
    assert put(issued, data).status_code == 200
    assert client.post("/v1/uploads/confirm", headers=headers,
                       json={"key": issued["key"]}).status_code == 202
    for locale in ("en", "es"):
        body = client.get(f"/v1/uploads/{issued['uploadId']}?locale={locale}",
                          headers=headers).get_json()
        assert body["status"] == "rejected"
        assert body["rejection"] == {"code": code, "messageKey": f"errors.{code}",
                                     "message": MESSAGES[code][locale]}
    # Bytes replaced by an empty placeholder at once; nothing sanitized was written.
    assert svc.storage.head(settings.uploads_bucket, issued["key"]).size == 0
    with pytest.raises(ObjectMissing):
        svc.storage.head(settings.uploads_bucket,
                         f"sanitized/wendy/{issued['uploadId']}.jpg")
    with svc.sessions() as session:
        event = session.scalars(select(AuditEvent).where(
            AuditEvent.subject_id == issued["uploadId"],
            AuditEvent.action == "upload.rejected")).one()
    assert event.details["code"] == code
    assert_no_secrets(json_logs, caplog)
    assert code in json_logs.getvalue()  # the reason is logged


# --- reads -----------------------------------------------------------------

def test_another_users_upload_is_404_like_a_missing_one(client, auth):
    issued = presign(client, auth("alice"), ASTRONAUT).get_json()
    for path in (f"/v1/uploads/{issued['uploadId']}", "/v1/uploads/not-a-uuid",
                 "/v1/uploads/00000000-0000-4000-8000-000000000000"):
        assert_error(client.get(path, headers=auth("mallory")), 404, "upload.not_found")
        assert_error(client.delete(path, headers=auth("mallory")), 404, "upload.not_found")
    assert client.get(f"/v1/uploads/{issued['uploadId']}",
                      headers=auth("alice")).get_json()["status"] == "pending"


def test_bad_cursor_is_422(client, auth):
    assert_error(client.get("/v1/uploads?cursor=%%%", headers=auth()), 422, "request.invalid")


def test_unknown_route_and_method_use_the_envelope(client, auth):
    assert_error(client.get("/v1/nothing-here", headers=auth()), 404, "request.not_found")
    assert_error(client.put("/v1/uploads/presign", headers=auth(), json={}), 405,
                 "request.method_not_allowed")


# --- broker down: nothing is lost --------------------------------------------

def test_confirm_with_broker_down_is_reconciled(client, auth, svc, dispatch):
    from datetime import timedelta

    from shared.uploads import retention
    issued = _issued_and_put(client, auth())
    dispatch.broker_down = True
    response = client.post("/v1/uploads/confirm", headers=auth(), json={"key": issued["key"]})
    assert response.status_code == 202
    assert response.get_json()["status"] == "validating"
    dispatch.broker_down = False
    assert retention.resend_stale_validations(svc) == 0  # not stale yet
    later = svc.clock() + timedelta(seconds=svc.settings.validation_stale_seconds + 1)
    svc.clock = lambda: later
    assert retention.resend_stale_validations(svc) == 1
    body = client.get(f"/v1/uploads/{issued['uploadId']}", headers=auth()).get_json()
    assert body["status"] == "ready"


# --- optional hooks, switched on by configuration -----------------------------

def test_face_detection_hook_rejects_a_photo_without_a_face(client, auth, svc):
    from dataclasses import replace

    svc.settings = replace(svc.settings, face_detection=True)
    headers = auth("yara")
    from tests.integration.test_upload_flow import upload_ready

    assert upload_ready(client, headers, fixture_bytes("astronaut.jpg"))["status"] == "ready"
    body = upload_ready(client, headers, fixture_bytes("coffee.jpg"))
    assert body["status"] == "rejected"
    assert body["rejection"]["code"] == "upload.no_face"
    body = upload_ready(client, headers, fixture_bytes("chelsea.jpg"))
    assert body["rejection"]["code"] == "upload.no_face"
