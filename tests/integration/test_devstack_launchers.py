"""The development launchers start what they promise.

Most importantly: the LocalStack S3 they start refuses every presigned PUT that real S3
would refuse, which is the reason it is used instead of moto. The first run installs
LocalStack into .devstack/localstack-venv (~35 s); later runs take ~10 s.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis
from botocore.config import Config

from devstack.localstack import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    LocalStackS3,
    MotoS3,
    ensure_installed,
    start_s3,
)
from devstack.redis_server import Kind, start_redis

pytestmark = pytest.mark.integration

CONTENT_TYPE = "image/jpeg"


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStackS3]:
    ensure_installed()
    data_dir = tmp_path_factory.mktemp("localstack")
    with LocalStackS3().start(data_dir=data_dir) as server:
        yield server


@pytest.fixture(scope="session")
def s3_client(localstack: LocalStackS3) -> Any:
    config = Config(
        signature_version="s3v4",
        # Otherwise botocore adds a CRC32 checksum of its own to the signed headers.
        request_checksum_calculation="when_required",
        s3={"addressing_style": "path"},
    )
    return boto3.client("s3", config=config, **localstack.client_kwargs())


@pytest.fixture(scope="session")
def bucket(s3_client: Any) -> str:
    # LocalStack has no reset endpoint; unique names keep runs independent.
    name = f"uploads-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    # trust_env=False: a proxy from the environment must not sit in front of 127.0.0.1.
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield client


@dataclass(frozen=True)
class SignedPut:
    url: str
    key: str
    body: bytes
    headers: dict[str, str]


def presign_put(s3_client: Any, bucket: str, body: bytes, expires: int = 60) -> SignedPut:
    """A presigned PUT bound to content type, length, SHA-256 and "create only"."""
    key = f"selfies/{uuid.uuid4().hex}.jpg"
    checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
    url = s3_client.generate_presigned_url(
        "put_object",
        Params={
            "Bucket": bucket,
            "Key": key,
            "ContentType": CONTENT_TYPE,
            "ContentLength": len(body),
            "ChecksumSHA256": checksum,
            "IfNoneMatch": "*",
        },
        ExpiresIn=expires,
    )
    headers = {
        "Content-Type": CONTENT_TYPE,
        "x-amz-checksum-sha256": checksum,
        "If-None-Match": "*",
    }
    return SignedPut(url=url, key=key, body=body, headers=headers)


def s3_error_code(response: httpx.Response) -> str:
    text = response.text
    start = text.find("<Code>")
    return text[start + 6 : text.find("</Code>")] if start >= 0 else ""


def object_exists(s3_client: Any, bucket: str, key: str) -> bool:
    try:
        s3_client.head_object(Bucket=bucket, Key=key)
    except s3_client.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise
    return True


BODY = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40  # 10 KiB that starts like a JPEG


# ------------------------------------------------------------------- LocalStack S3


def test_ensure_installed_is_idempotent_and_fast() -> None:
    python = ensure_installed()
    started = time.monotonic()
    assert ensure_installed() == python
    assert time.monotonic() - started < 0.5
    assert python.exists()


def test_localstack_listens_on_loopback_only(localstack: LocalStackS3) -> None:
    assert localstack.endpoint_url.startswith("http://127.0.0.1:")
    assert localstack.verifies_signatures
    port = localstack.port
    assert port is not None
    addresses = listening_addresses(port)
    assert addresses == {"0100007F"}, f"port {port} is bound to {addresses}, not only 127.0.0.1"


def listening_addresses(port: int) -> set[str]:
    """Hex local addresses of LISTEN sockets on `port`, from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.add(address)
    return found


def test_exact_signed_put_succeeds_once(s3_client: Any, bucket: str, http: httpx.Client) -> None:
    signed = presign_put(s3_client, bucket, BODY)

    first = http.put(signed.url, content=signed.body, headers=signed.headers)
    assert first.status_code == 200, first.text
    stored = s3_client.get_object(Bucket=bucket, Key=signed.key)
    assert stored["Body"].read() == BODY
    assert stored["ContentType"] == CONTENT_TYPE

    # If-None-Match: * is signed, so a replayed URL cannot overwrite the object.
    second = http.put(signed.url, content=signed.body, headers=signed.headers)
    assert second.status_code == 412, second.text
    assert s3_error_code(second) == "PreconditionFailed"


TAMPERED = {
    "other content type": (
        lambda s: {**s.headers, "Content-Type": "image/png"},
        BODY,
        403,
        "SignatureDoesNotMatch",
    ),
    "one byte longer": (lambda s: s.headers, BODY + b"\x00", 403, "SignatureDoesNotMatch"),
    "one byte shorter": (lambda s: s.headers, BODY[:-1], 403, "SignatureDoesNotMatch"),
    # Same length, so only the checksum can tell: S3 answers 400, not 403.
    "other bytes": (lambda s: s.headers, BODY[:-1] + b"\x01", 400, "BadDigest"),
    "extra unsigned header": (
        lambda s: {**s.headers, "x-amz-meta-x": "1"},
        BODY,
        403,
        "AccessDenied",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_put_is_refused(case: str, s3_client: Any, bucket: str, http: httpx.Client) -> None:
    make_headers, body, status, code = TAMPERED[case]
    signed = presign_put(s3_client, bucket, BODY)

    response = http.put(signed.url, content=body, headers=make_headers(signed))

    assert response.status_code == status, response.text
    assert s3_error_code(response) == code
    assert not object_exists(s3_client, bucket, signed.key)


def test_expired_put_is_refused(s3_client: Any, bucket: str, http: httpx.Client) -> None:
    signed = presign_put(s3_client, bucket, BODY, expires=1)
    time.sleep(2)

    response = http.put(signed.url, content=signed.body, headers=signed.headers)

    assert response.status_code == 403, response.text
    assert s3_error_code(response) == "AccessDenied"
    assert "expired" in response.text.lower()
    assert not object_exists(s3_client, bucket, signed.key)


# ------------------------------------------------------------------- moto fallback


def test_start_s3_falls_back_to_moto_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # a venv cannot be created below a regular file
    caplog.set_level(logging.WARNING, logger="devstack.localstack")

    with start_s3(data_dir=tmp_path, venv_dir=blocker / "venv") as s3:
        assert isinstance(s3, MotoS3)
        assert not s3.verifies_signatures
        client = boto3.client(
            "s3",
            endpoint_url=s3.endpoint_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
        )
        client.create_bucket(Bucket="fallback-bucket")
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["fallback-bucket"]

    assert not s3.alive()
    assert "moto does NOT check presigned-URL signatures or expiry" in caplog.text


# -------------------------------------------------------------------------- Redis


@pytest.mark.parametrize("kind", ["redis-server", "fakeredis"])
def test_redis_answers_ping_and_stops(kind: Kind, tmp_path: Path) -> None:
    if kind == "redis-server" and shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = start_redis(tmp_path, prefer=kind)
    try:
        assert server.kind == kind
        assert server.url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.set("greeting", "hi")
        assert client.get("greeting") == b"hi"
        client.close()
    finally:
        server.stop()

    assert not server.alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
