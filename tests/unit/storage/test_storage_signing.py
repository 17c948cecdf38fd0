"""Presigned URLs are signed for the public endpoint, carry only our headers, and
never a checksum of botocore's own choosing. Signing is local: no server needed."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from shared.storage.s3 import S3Storage
from tests.conftest import make_settings


def test_upload_url_is_signed_for_the_public_host():
    settings = make_settings(s3_endpoint_url="http://minio.internal:9000",
                             s3_public_endpoint_url="https://uploads.example.com")
    put = S3Storage(settings).presign_put("bucket", "uploads/u/x.jpg", content_type="image/jpeg",
                                          content_length=123, checksum_sha256=None,
                                          expires_in=300)
    parts = urlsplit(put.url)
    assert parts.netloc == "uploads.example.com"
    query = parse_qs(parts.query)
    assert query["X-Amz-SignedHeaders"] == ["content-length;content-type;host;if-none-match"]
    assert not any(k.lower().startswith("x-amz-checksum") or k.lower() == "x-amz-sdk-checksum-algorithm"
                   for k in query)
    assert put.headers == {"Content-Type": "image/jpeg", "Content-Length": "123",
                           "If-None-Match": "*"}
    get = S3Storage(settings).presign_get("bucket", "sanitized/u/x.jpg", expires_in=300)
    assert urlsplit(get).netloc == "uploads.example.com"
    assert parse_qs(urlsplit(get).query)["response-cache-control"] == ["no-store"]


def test_both_clients_come_from_one_session_built_once(monkeypatch):
    """Each boto3 session loads botocore's S3 model again (~13 MiB, ~120 ms): the
    internal client and the signer share one, built once even when threads race."""
    import threading

    import boto3

    made = []
    real = boto3.session.Session
    monkeypatch.setattr(boto3.session, "Session", lambda: made.append(1) or real())
    storage = S3Storage(make_settings(s3_endpoint_url="http://minio.internal:9000",
                                      s3_public_endpoint_url="https://uploads.example.com"))
    threads = [threading.Thread(target=storage.build_clients) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made == [1]
    assert storage.client.meta.endpoint_url == "http://minio.internal:9000"
    assert storage.signer.meta.endpoint_url == "https://uploads.example.com"
