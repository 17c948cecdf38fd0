"""The storage check's reading of bucket configuration, for what LocalStack cannot
show: an HTTPS endpoint (where the TLS-only policy is required) and policy variants."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from shared.storage.check import Status, _tls_only, denies_plain_http
from shared.storage.keys import CHECK_PREFIX, RAW_PREFIX, RESULT_PREFIX, SANITIZED_PREFIX
from shared.storage.setup import _tls_only_policy
from tests.conftest import make_settings

BUCKET = "hf-uploads"


class _NoPolicy:
    def get_bucket_policy(self, Bucket: str) -> dict[str, Any]:  # noqa: N803 - boto3's name
        raise ClientError({"Error": {"Code": "NoSuchBucketPolicy"},
                           "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetBucketPolicy")


def test_setup_policy_is_recognised_and_weaker_ones_are_not() -> None:
    policy = _tls_only_policy(BUCKET)
    assert denies_plain_http(json.dumps(policy), BUCKET)
    statement = policy["Statement"][0]
    for weaker in ({**statement, "Effect": "Allow"},
                   {**statement, "Condition": {}},
                   {**statement, "Resource": [f"arn:aws:s3:::{BUCKET}"]},  # not the objects
                   {**statement, "Principal": {"AWS": "arn:aws:iam::1:root"}},
                   {**statement, "Action": "s3:GetObject"}):
        assert not denies_plain_http(json.dumps({"Statement": [weaker]}), BUCKET), weaker
    assert not denies_plain_http("not json", BUCKET)


def test_an_https_endpoint_without_the_policy_fails() -> None:
    https = make_settings(s3_endpoint_url="https://s3.example.net")
    result = _tls_only(_NoPolicy(), https, BUCKET)
    assert result.status is Status.FAIL and "setup-storage" in result.fix

    plain = make_settings(s3_endpoint_url="http://127.0.0.1:9000")
    assert _tls_only(_NoPolicy(), plain, BUCKET).status is Status.SKIP


def test_no_sweep_owns_the_reserved_prefix() -> None:
    # The orphan sweep, retention and erasure list only these (shared/privacy).
    assert not any(CHECK_PREFIX.startswith(p) or p.startswith(CHECK_PREFIX)
                   for p in (RAW_PREFIX, SANITIZED_PREFIX, RESULT_PREFIX))
