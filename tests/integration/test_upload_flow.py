"""The upload contract end to end, as the app does it: presign through the API,
PUT to the signature-checking S3 endpoint with exactly the returned headers,
confirm, poll until `ready`; then every way it can fail."""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from shared.models import AuditEvent, Upload
from tests.conftest import assert_error, assert_no_secrets, fixture_bytes

ASTRONAUT = fixture_bytes("astronaut.jpg")


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def with_gps_exif(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0132] = "2026:11:23 10:00:00"
    gps = {1: "N", 2: (40.0, 25.0, 0.0), 3: "W", 4: (3.0, 42.0, 0.0)}
    exif[0x8825] = gps  # GPSInfo IFD
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=92)
    return out.getvalue()


def presign(client: Any, headers: dict[str, str], data: bytes, *,
            content_type: str = "image/jpeg", checksum: bool = True, **extra: Any) -> Any:
    body = {"contentType": content_type, "contentLength": len(data), **extra}
    if checksum:
        body["checksum"] = sha256_b64(data)
    return client.post("/v1/uploads/presign", json=body, headers=headers)


def put(issued: dict[str, Any], data: bytes, **header_changes: str | None) -> httpx.Response:
    headers = dict(issued["headers"])
    for name, value in header_changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return httpx.put(issued["uploadUrl"], content=data, headers=headers, timeout=10)


def upload_ready(client: Any, headers: dict[str, str], data: bytes, **kw: Any) -> dict[str, Any]:
    issued = presign(client, headers, data, **kw).get_json()
    assert put(issued, data).status_code == 200
    confirmed = client.post("/v1/uploads/confirm", json={"key": issued["key"]}, headers=headers)
    assert confirmed.status_code == 202, confirmed.get_json()
    return client.get(f"/v1/uploads/{issued['uploadId']}", headers=headers).get_json()


def test_presign_put_confirm_ready_strips_exif(client, auth, svc, settings, json_logs, caplog):
    data = with_gps_exif(ASTRONAUT)
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825), "fixture must carry GPS"
    headers = auth("alice")

    response = presign(client, headers, data)
    assert response.status_code == 201
    issued = response.get_json()
    assert issued["method"] == "PUT"
    assert issued["key"].startswith("uploads/alice/") and issued["key"].endswith(".jpg")
    assert issued["maxBytes"] == 16 * 1024 * 1024
    assert issued["headers"] == {
        "Content-Type": "image/jpeg", "Content-Length": str(len(data)), "If-None-Match": "*",
        "x-amz-checksum-sha256": sha256_b64(data)}
    query = parse_qs(urlsplit(issued["uploadUrl"]).query)
    signed = query["X-Amz-SignedHeaders"][0].split(";")
    assert {"content-type", "content-length", "host", "if-none-match",
            "x-amz-checksum-sha256"} <= set(signed)
    assert int(query["X-Amz-Expires"][0]) <= 300
    assert "x-amz-checksum-crc32" not in issued["uploadUrl"].lower()

    assert put(issued, data).status_code == 200
    confirm = client.post("/v1/uploads/confirm", json={"key": issued["key"]}, headers=headers)
    assert confirm.status_code == 202
    # The inline dispatcher ran validation right after the commit.
    body = client.get(f"/v1/uploads/{issued['uploadId']}", headers=headers).get_json()
    assert body["status"] == "ready"
    assert (body["width"], body["height"]) == (512, 512)

    with svc.sessions() as session:
        upload = session.get(Upload, issued["uploadId"])
        actions = list(session.scalars(select(AuditEvent.action).where(
            AuditEvent.subject_id == upload.id).order_by(AuditEvent.id)))
    assert actions == ["upload.issued", "upload.confirmed", "upload.validated"]
    clean = svc.storage.get_bytes(settings.uploads_bucket, upload.sanitized_key,
                                  max_bytes=10**8)
    assert hashlib.sha256(clean).hexdigest() == upload.sanitized_sha256
    image = Image.open(io.BytesIO(clean))
    assert image.format == "JPEG"
    assert not image.getexif(), "EXIF survived sanitizing"
    assert b"Exif" not in clean[:4096] and b"PhoneMaker" not in clean
    assert_no_secrets(json_logs, caplog)


def test_storage_refuses_a_second_put_to_the_same_url(client, auth):
    headers = auth("bob")
    issued = presign(client, headers, ASTRONAUT).get_json()
    assert put(issued, ASTRONAUT).status_code == 200
    second = put(issued, ASTRONAUT)
    assert second.status_code == 412


@pytest.mark.parametrize(("change", "status"), [
    ({"Content-Type": "image/png"}, 403),
    ({"x-amz-meta-extra": "1"}, 403),
])
def test_storage_refuses_tampered_headers(client, auth, change, status):
    issued = presign(client, auth("carol"), ASTRONAUT).get_json()
    assert put(issued, ASTRONAUT, **change).status_code == status


@pytest.mark.parametrize("delta", [1, -1])
def test_storage_refuses_another_length(client, auth, delta):
    issued = presign(client, auth("carol"), ASTRONAUT).get_json()
    body = ASTRONAUT + b"\0" if delta > 0 else ASTRONAUT[:-1]
    response = put(issued, body, Content_Length=str(len(body)))
    assert response.status_code == 403


def test_storage_refuses_bytes_that_differ_from_the_signed_checksum(client, auth):
    issued = presign(client, auth("carol"), ASTRONAUT).get_json()
    tampered = bytearray(ASTRONAUT)
    tampered[1000] ^= 0xFF
    assert put(issued, bytes(tampered)).status_code == 400


def test_storage_refuses_an_expired_url(client, auth, settings, svc):
    import time

    issued = svc.storage.presign_put(settings.uploads_bucket, "uploads/dave/x.jpg",
                                     content_type="image/jpeg", content_length=len(ASTRONAUT),
                                     checksum_sha256=None, expires_in=1)
    time.sleep(2)
    response = httpx.put(issued.url, content=ASTRONAUT, headers=issued.headers, timeout=10)
    assert response.status_code == 403


def test_list_pages_and_delete(client, auth, svc, settings):
    headers = auth("erin")
    ids = [upload_ready(client, headers, ASTRONAUT)["uploadId"] for _ in range(3)]
    first = client.get("/v1/uploads?limit=2", headers=headers).get_json()
    assert len(first["items"]) == 2 and first["nextCursor"]
    second = client.get(f"/v1/uploads?limit=2&cursor={first['nextCursor']}",
                        headers=headers).get_json()
    assert second["nextCursor"] is None
    seen = [u["uploadId"] for u in first["items"] + second["items"]]
    assert sorted(seen) == sorted(ids)
    assert client.get("/v1/uploads", headers=auth("frank")).get_json()["items"] == []

    victim = ids[0]
    with svc.sessions() as session:
        upload = session.get(Upload, victim)
    assert client.delete(f"/v1/uploads/{victim}", headers=auth("frank")).status_code == 404
    assert client.delete(f"/v1/uploads/{victim}", headers=headers).status_code == 204
    # Gone for a read, as a deleted try-on is; the record stays listed by its status.
    assert_error(client.get(f"/v1/uploads/{victim}", headers=headers), 404, "upload.not_found")
    assert client.delete(f"/v1/uploads/{victim}", headers=headers).status_code == 204  # again
    deleted = client.get("/v1/uploads?status=deleted", headers=headers).get_json()["items"]
    assert [(u["uploadId"], u["status"]) for u in deleted] == [(victim, "deleted")]
    from shared.storage.base import ObjectMissing

    with pytest.raises(ObjectMissing):
        svc.storage.head(settings.uploads_bucket, upload.sanitized_key)
    # The raw key keeps an empty placeholder while its URL could still be used.
    assert svc.storage.head(settings.uploads_bucket, upload.key).size == 0
    listed = client.get("/v1/uploads", headers=headers).get_json()["items"]
    assert victim not in [u["uploadId"] for u in listed]
    with svc.sessions() as session:
        deletions = session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "upload.deleted", AuditEvent.subject_id == victim))
    assert deletions == 1
