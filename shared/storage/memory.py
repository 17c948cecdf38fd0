"""An in-memory ObjectStorage for unit tests and tools: the same interface and
errors as S3, with object times from the caller's clock (so a test can age them).

Presigned URLs are not signed: they name the bucket, key and expiry, and `put_url`
stands in for the app's PUT.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlencode, urlsplit

from shared.storage.base import (
    ObjectInfo,
    ObjectMissing,
    PresignedPut,
    StorageUnavailable,
    sha256_b64,
)


@dataclass
class StoredObject:
    data: bytes
    content_type: str
    tags: dict[str, str]
    created: datetime


@dataclass
class MemoryStorage:
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    buckets: dict[str, dict[str, StoredObject]] = field(default_factory=dict)
    # Set to make every call fail as an unreachable store does.
    down: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _bucket(self, bucket: str) -> dict[str, StoredObject]:
        if self.down:
            raise StorageUnavailable("memory storage is down")
        return self.buckets.setdefault(bucket, {})

    def _object(self, bucket: str, key: str) -> StoredObject:
        try:
            return self._bucket(bucket)[key]
        except KeyError:
            raise ObjectMissing(key) from None

    # -- URLs ---------------------------------------------------------------
    def presign_put(self, bucket: str, key: str, *, content_type: str, content_length: int,
                    checksum_sha256: str | None, expires_in: int) -> PresignedPut:
        headers = {"Content-Type": content_type, "Content-Length": str(content_length),
                   "If-None-Match": "*"}
        if checksum_sha256:
            headers["x-amz-checksum-sha256"] = checksum_sha256
        return PresignedPut(self._url(bucket, key, expires_in), headers)

    def presign_get(self, bucket: str, key: str, *, expires_in: int) -> str:
        return self._url(bucket, key, expires_in)

    def _url(self, bucket: str, key: str, expires_in: int) -> str:
        expires = int(self.clock().timestamp()) + expires_in
        return f"memory://{bucket}/{key}?{urlencode({'expires': expires})}"

    def put_url(self, url: str, data: bytes, headers: dict[str, str]) -> None:
        """What S3 would do with the app's PUT to a presigned URL: refuse it once
        expired, once the object exists (If-None-Match), or if the bytes do not
        match the signed size and checksum."""
        parts = urlsplit(url)
        if int(parse_qs(parts.query)["expires"][0]) < self.clock().timestamp():
            raise PermissionError("expired")
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if key in self._bucket(bucket):
            raise FileExistsError(key)
        if len(data) != int(headers["Content-Length"]):
            raise ValueError("size")
        if "x-amz-checksum-sha256" in headers and sha256_b64(data) != headers[
                "x-amz-checksum-sha256"]:
            raise ValueError("checksum")
        self.put_bytes(bucket, key, data, content_type=headers["Content-Type"])

    # -- objects ------------------------------------------------------------
    def head(self, bucket: str, key: str) -> ObjectInfo:
        obj = self._object(bucket, key)
        return ObjectInfo(size=len(obj.data), content_type=obj.content_type,
                          checksum_sha256=sha256_b64(obj.data), last_modified=obj.created)

    def get_bytes(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        return self._object(bucket, key).data[:max_bytes + 1]

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str,
                  tags: dict[str, str] | None = None) -> None:
        with self._lock:
            self._bucket(bucket)[key] = StoredObject(data, content_type, dict(tags or {}),
                                                     self.clock())

    def tags(self, bucket: str, key: str) -> dict[str, str]:
        return dict(self._object(bucket, key).tags)

    def set_tags(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        self._object(bucket, key).tags = dict(tags)

    def renew(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        obj = self._object(bucket, key)
        obj.tags, obj.created = dict(tags), self.clock()

    def delete(self, bucket: str, key: str) -> None:
        with self._lock:
            self._bucket(bucket).pop(key, None)

    def list_keys(self, bucket: str, prefix: str) -> list[tuple[str, datetime]]:
        return sorted((k, o.created) for k, o in self._bucket(bucket).items()
                      if k.startswith(prefix))

    def ping(self, bucket: str) -> None:
        self._bucket(bucket)
