"""The object-storage interface, its errors and values, and a store bound to one
bucket.

Domain code holds a `BucketStore` (Services.upload_store, Services.result_store),
never a bucket name; implementations (S3, in-memory) take the bucket per call.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

UPLOAD_CACHE_CONTROL = "no-store"


class StorageUnavailable(Exception):
    """The object store could not be reached or answered with a server error."""


class ObjectMissing(Exception):
    pass


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    content_type: str | None
    checksum_sha256: str | None  # base64, as S3 reports it
    last_modified: datetime | None


@dataclass(frozen=True)
class PresignedPut:
    url: str
    headers: dict[str, str]


class ObjectStorage(Protocol):
    def presign_put(self, bucket: str, key: str, *, content_type: str, content_length: int,
                    checksum_sha256: str | None, expires_in: int) -> PresignedPut: ...
    def presign_get(self, bucket: str, key: str, *, expires_in: int) -> str: ...
    def head(self, bucket: str, key: str) -> ObjectInfo: ...
    def get_bytes(self, bucket: str, key: str, *, max_bytes: int) -> bytes: ...
    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str,
                  tags: dict[str, str] | None = None) -> None: ...
    def set_tags(self, bucket: str, key: str, tags: dict[str, str]) -> None: ...
    def renew(self, bucket: str, key: str, tags: dict[str, str]) -> None: ...
    def delete(self, bucket: str, key: str) -> None: ...
    def list_keys(self, bucket: str, prefix: str) -> list[tuple[str, datetime]]: ...
    def ping(self, bucket: str) -> None: ...


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@dataclass(frozen=True)
class BucketStore:
    """One bucket of an ObjectStorage; every call names only the key."""

    storage: ObjectStorage
    bucket: str

    def presign_put(self, key: str, *, content_type: str, content_length: int,
                    checksum_sha256: str | None, expires_in: int) -> PresignedPut:
        return self.storage.presign_put(self.bucket, key, content_type=content_type,
                                        content_length=content_length,
                                        checksum_sha256=checksum_sha256, expires_in=expires_in)

    def presign_get(self, key: str, *, expires_in: int) -> str:
        return self.storage.presign_get(self.bucket, key, expires_in=expires_in)

    def head(self, key: str) -> ObjectInfo:
        return self.storage.head(self.bucket, key)

    def get_bytes(self, key: str, *, max_bytes: int) -> bytes:
        return self.storage.get_bytes(self.bucket, key, max_bytes=max_bytes)

    def put_bytes(self, key: str, data: bytes, *, content_type: str,
                  tags: dict[str, str] | None = None) -> None:
        self.storage.put_bytes(self.bucket, key, data, content_type=content_type, tags=tags)

    def set_tags(self, key: str, tags: dict[str, str]) -> None:
        self.storage.set_tags(self.bucket, key, tags)

    def renew(self, key: str, tags: dict[str, str]) -> None:
        self.storage.renew(self.bucket, key, tags)

    def delete(self, key: str) -> None:
        self.storage.delete(self.bucket, key)

    def list_keys(self, prefix: str) -> list[tuple[str, datetime]]:
        return self.storage.list_keys(self.bucket, prefix)

    def ping(self) -> None:
        self.storage.ping(self.bucket)
