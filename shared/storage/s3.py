"""The S3 implementation of ObjectStorage (boto3).

Two clients: the internal one talks to S3 from our network; the presigning one
signs URLs for the host the app reaches (S3_PUBLIC_ENDPOINT_URL), because the
host is part of a SigV4 signature. Clients are built on first use (a worker
builds them as it starts: worker/pool_setup.py), never at import time, from one
boto3 session: each session loads botocore's S3 model again (~13 MiB and ~120 ms
of CPU), a second client from the same session costs ~0.3 MiB and ~12 ms. S3
errors become plain Python exceptions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.core.config import Settings
from shared.core.pools import s3_pool_size
from shared.core.timeouts import S3_ATTEMPTS, s3_socket_timeout
from shared.storage.base import (
    UPLOAD_CACHE_CONTROL,
    ObjectInfo,
    ObjectMissing,
    PresignedPut,
    StorageUnavailable,
    sha256_b64,
)


def _config(**extra: Any) -> Config:
    return Config(
        signature_version="s3v4",
        # Recent botocore adds its own CRC checksum to requests and presigned URLs
        # by default, which R2/MinIO and older SDK clients reject; checksums are
        # ours to choose (SHA-256, declared by the app).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # One connection per task or request the process runs at once (a threads
        # pool of 16 would otherwise reconnect beyond botocore's 10).
        max_pool_connections=s3_pool_size(),
        **extra,
    )


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: boto3.session.Session | None = None
        # A boto3 session is not thread-safe; the clients it makes are.
        self._session_lock = threading.Lock()

    def _client(self, endpoint: str, **config: Any) -> Any:
        s = self._settings
        with self._session_lock:
            if self._session is None:
                self._session = boto3.session.Session()
            return self._session.client(
                "s3",
                endpoint_url=endpoint or None,
                region_name=s.s3_region,
                aws_access_key_id=s.s3_access_key_id or None,
                aws_secret_access_key=s.s3_secret_access_key or None,
                config=_config(s3={"addressing_style": s.s3_addressing_style}, **config),
            )

    def build_clients(self) -> None:
        """Build both clients now rather than at their first use."""
        _ = self.client, self.signer

    @cached_property
    def client(self) -> Any:
        # Every call ends within S3_TIMEOUT_SECONDS (shared/core/timeouts.py): a fixed
        # number of attempts in "standard" mode, whose backoff is bounded (legacy
        # mode's `max_attempts: 3` meant four tries of up to 23 s each). A read
        # timeout bounds each wait for bytes, so large bodies still stream.
        socket_timeout = s3_socket_timeout(self._settings.s3_timeout_seconds)
        return self._client(self._settings.s3_endpoint_url,
                            connect_timeout=socket_timeout, read_timeout=socket_timeout,
                            retries={"mode": "standard", "total_max_attempts": S3_ATTEMPTS})

    @cached_property
    def signer(self) -> Any:
        return self._client(self._settings.presign_endpoint_url)

    # -- URLs ---------------------------------------------------------------
    def presign_put(self, bucket: str, key: str, *, content_type: str, content_length: int,
                    checksum_sha256: str | None, expires_in: int) -> PresignedPut:
        params: dict[str, Any] = {
            "Bucket": bucket, "Key": key, "ContentType": content_type,
            "ContentLength": content_length,
            # Signed in, so a second PUT to the same URL fails with 412 while the
            # object exists: the URL is single-use for its whole life.
            "IfNoneMatch": "*",
        }
        headers = {"Content-Type": content_type, "Content-Length": str(content_length),
                   "If-None-Match": "*"}
        if checksum_sha256:
            params["ChecksumSHA256"] = checksum_sha256
            headers["x-amz-checksum-sha256"] = checksum_sha256
        url = self.signer.generate_presigned_url("put_object", Params=params,
                                                 ExpiresIn=expires_in, HttpMethod="PUT")
        return PresignedPut(url=url, headers=headers)

    def presign_get(self, bucket: str, key: str, *, expires_in: int) -> str:
        return str(self.signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": bucket, "Key": key, "ResponseCacheControl": UPLOAD_CACHE_CONTROL},
            ExpiresIn=expires_in,
        ))

    # -- objects ------------------------------------------------------------
    def head(self, bucket: str, key: str) -> ObjectInfo:
        with _s3_errors(key):
            r = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        return ObjectInfo(size=int(r["ContentLength"]), content_type=r.get("ContentType"),
                          checksum_sha256=r.get("ChecksumSHA256"),
                          last_modified=r.get("LastModified"))

    def get_bytes(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        with _s3_errors(key):
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            data: bytes = body.read(max_bytes + 1)  # one byte more tells "too large"
            body.close()
        return data

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str,
                  tags: dict[str, str] | None = None) -> None:
        extra: dict[str, Any] = dict(self._settings.sse_params)
        if tags:
            extra["Tagging"] = urlencode(tags)
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type,
                                   ChecksumSHA256=sha256_b64(data), **extra)
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable(exc) from None

    def set_tags(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        with _s3_errors(key):
            self.client.put_object_tagging(Bucket=bucket, Key=key, Tagging={
                "TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})

    def renew(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        """Copy the object onto itself with these tags: a lifecycle rule counts its age
        from now again (the bytes stay; metadata and encryption are kept)."""
        with _s3_errors(key):
            head = self.client.head_object(Bucket=bucket, Key=key)
            self.client.copy_object(
                Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                # REPLACE (with the same values): S3 refuses a copy onto itself that
                # changes nothing, and tags alone do not count.
                MetadataDirective="REPLACE", ContentType=head.get("ContentType") or
                "application/octet-stream", Metadata=head.get("Metadata") or {},
                TaggingDirective="REPLACE", Tagging=urlencode(tags),
                **self._settings.sse_params)

    def delete(self, bucket: str, key: str) -> None:
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and _status(exc) == 404:
                return
            raise _unavailable(exc) from None

    def list_keys(self, bucket: str, prefix: str) -> list[tuple[str, datetime]]:
        out: list[tuple[str, datetime]] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                          Prefix=prefix)
            for page in pages:
                out.extend((o["Key"], o["LastModified"]) for o in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable(exc) from None
        return out

    def ping(self, bucket: str) -> None:
        try:
            self.client.head_bucket(Bucket=bucket)
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable(exc) from None


@contextmanager
def _s3_errors(key: str) -> Iterator[None]:
    """S3 errors as plain ones: 404 -> ObjectMissing, anything else -> StorageUnavailable."""
    try:
        yield
    except ClientError as exc:
        if _status(exc) == 404:
            raise ObjectMissing(key) from None
        raise _unavailable(exc) from None
    except BotoCoreError as exc:
        raise _unavailable(exc) from None


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _unavailable(exc: Exception) -> StorageUnavailable:
    # Only the error class and code: botocore messages can quote request URLs.
    code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
    return StorageUnavailable(f"{type(exc).__name__} {code}".strip())
