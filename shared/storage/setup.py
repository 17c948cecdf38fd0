"""`hairfluencer setup-storage`: create missing buckets and harden both (SPEC §6).

Applied to each bucket: block all public access, default encryption, a bucket
policy that denies any request not made over TLS, CORS for configured origins,
and lifecycle rules as a backstop to the beat cleanup (uploads: UPLOAD_RETENTION_HOURS
in whole days; processed results: RESULT_RETENTION_DAYS unless tagged
`retention=kept`, which favorites set).
Endpoints that do not implement one of these (some S3-compatibles) are reported,
not fatal, so the command is usable against MinIO or R2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from shared.core.config import Settings
from shared.storage.keys import RETENTION_TAG, TEMPORARY
from shared.storage.s3 import S3Storage

# Answers that mean the bucket or the credentials are wrong, not that the provider
# lacks a feature: the release step fails on them (a misspelt bucket name must not
# pass a deploy), where a feature's refusal is reported and the step goes on.
FATAL_CODES = frozenset({"NoSuchBucket", "InvalidBucketName", "InvalidAccessKeyId",
                         "SignatureDoesNotMatch"})


@dataclass(frozen=True)
class Step:
    line: str
    fatal: bool = False


def apply(settings: Settings, *, create: bool = True) -> Iterator[str]:
    return (step.line for step in apply_steps(settings, create=create))


def apply_steps(settings: Settings, *, create: bool = True) -> Iterator[Step]:
    client = S3Storage(settings).client
    for bucket, lifecycle in ((settings.uploads_bucket, _uploads_lifecycle(settings)),
                              (settings.processed_bucket, _processed_lifecycle(settings))):
        for what, action in _steps(client, bucket, lifecycle, settings, create):
            yield _step(bucket, what, action)


def _steps(client: Any, bucket: str, lifecycle: list[dict[str, Any]], settings: Settings,
           create: bool) -> Iterator[tuple[str, Callable[[], Any] | None]]:
    if create:
        yield "bucket", partial(_create, client, bucket, settings.s3_region)
    yield "public access block", partial(
        client.put_public_access_block, Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True,
            "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    yield "default encryption", partial(
        client.put_bucket_encryption, Bucket=bucket,
        ServerSideEncryptionConfiguration={"Rules": [_encryption_rule(settings)]})
    if settings.s3_endpoint_url.startswith("http://"):
        # A plain-HTTP endpoint (local MinIO/LocalStack) would lock us out.
        yield "TLS-only policy (skipped: endpoint is plain HTTP)", None
    else:
        yield "TLS-only policy", partial(client.put_bucket_policy, Bucket=bucket,
                                         Policy=json.dumps(_tls_only_policy(bucket)))
    if settings.cors_origins:
        yield "CORS", partial(client.put_bucket_cors, Bucket=bucket,
                              CORSConfiguration=_cors(settings.cors_origins))
    yield "lifecycle", partial(client.put_bucket_lifecycle_configuration, Bucket=bucket,
                               LifecycleConfiguration={"Rules": lifecycle})


def _step(bucket: str, what: str, action: Callable[[], Any] | None) -> Step:
    if action is None:
        return Step(f"{bucket}: {what}")
    try:
        action()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        return Step(f"{bucket}: {what}: not applied ({code})", fatal=code in FATAL_CODES)
    return Step(f"{bucket}: {what}: ok")


def _create(client: Any, bucket: str, region: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError:
        pass
    params: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": region}
    client.create_bucket(**params)


def _encryption_rule(settings: Settings) -> dict[str, Any]:
    if settings.sse_kms_key_id:
        return {"ApplyServerSideEncryptionByDefault": {
            "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": settings.sse_kms_key_id},
            "BucketKeyEnabled": True}
    return {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}


def _tls_only_policy(bucket: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


def _cors(origins: str) -> dict[str, Any]:
    return {"CORSRules": [{
        "AllowedOrigins": [o.strip() for o in origins.split(",") if o.strip()],
        "AllowedMethods": ["PUT", "GET"],
        "AllowedHeaders": ["content-type", "content-length", "if-none-match",
                           "x-amz-checksum-sha256"],
        "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 3000}]}


def _uploads_lifecycle(settings: Settings) -> list[dict[str, Any]]:
    # Whole days, at least one, never before the selfie retention the beat enforces.
    days = max(1, math.ceil(settings.upload_retention_hours / 24))
    return [{"ID": "expire-selfies", "Status": "Enabled", "Filter": {"Prefix": ""},
             "Expiration": {"Days": days},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]


def _processed_lifecycle(settings: Settings) -> list[dict[str, Any]]:
    return [{"ID": "expire-unkept-results", "Status": "Enabled",
             "Filter": {"Tag": {"Key": RETENTION_TAG, "Value": TEMPORARY}},
             "Expiration": {"Days": settings.result_retention_days}}]
