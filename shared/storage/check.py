"""`hairfluencer storage check`: a self-test of the configured S3 provider.

Each bucket (uploads, processed) is checked for what the app relies on and what
`setup-storage` applies (shared/storage/setup.py), item by item, each with a fix:
reachability and credentials, clock skew against the server's `Date`, addressing
style, a presigned PUT (with the headers the app signs) accepted, a tampered one
refused, `If-None-Match: *` honoured, then the bucket's configuration read back:
default encryption, public access block, TLS-only policy, lifecycle, CORS.

Configuration is read, not probed with anonymous or plain-HTTP requests: some
providers (LocalStack among them) store ACLs and bucket policies without enforcing
them, so a probe would prove nothing. The only writes go under CHECK_PREFIX, in a
folder of this run, and are deleted before returning.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from shared.core.config import Settings
from shared.storage.base import PresignedPut, sha256_b64
from shared.storage.keys import CHECK_PREFIX, check_key
from shared.storage.s3 import S3Storage
from shared.storage.setup import (
    _cors,
    _encryption_rule,
    _processed_lifecycle,
    _uploads_lifecycle,
)

# Presigned URLs live PRESIGN_TTL_SECONDS (at most 300 s) by the signer's clock: a
# server ahead by a minute takes a fifth of that away. SigV4 refuses any request
# beyond 15 min, which is far too late to notice.
MAX_CLOCK_SKEW_SECONDS = 60
SETUP_FIX = "run `hairfluencer setup-storage` (it applies exactly what is checked here)"


class Status(StrEnum):
    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    FAIL = "FAIL"
    SKIP = "SKIP"  # not applicable to this configuration; never a failure


@dataclass(frozen=True)
class CheckResult:
    bucket: str
    item: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAIL

    def line(self) -> str:
        text = f"{self.status} {self.bucket}: {self.item}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.status is Status.FAIL and self.fix else text


Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def run_checks(settings: Settings, *, now: Clock = _utc_now) -> list[CheckResult]:
    """Every item for both buckets; the caller fails if any result is not ok."""
    storage = S3Storage(settings)
    results: list[CheckResult] = []
    for bucket, lifecycle in ((settings.uploads_bucket, _uploads_lifecycle(settings)),
                              (settings.processed_bucket, _processed_lifecycle(settings))):
        results.extend(_check_bucket(storage, settings, bucket, lifecycle, now))
    return results


def _check_bucket(storage: S3Storage, settings: Settings, bucket: str,
                  lifecycle: list[dict[str, Any]], now: Clock) -> Iterator[CheckResult]:
    reach, headers = _reachable(storage.client, bucket)
    yield reach
    yield _clock(bucket, headers, now)
    yield _addressing(settings, bucket, reach.ok)
    if not reach.ok:
        yield CheckResult(bucket, "other items", Status.FAIL,
                          "not checked: the bucket is not reachable", "see `reachable` above")
        return
    yield from _presigned_puts(storage, settings, bucket)
    client = storage.client
    yield _encryption(client, settings, bucket)
    yield _public_access_block(client, bucket)
    yield _tls_only(client, settings, bucket)
    yield _lifecycle(client, bucket, lifecycle)
    yield _cors_item(client, settings, bucket)


# -- reachability, clock, addressing ----------------------------------------

def _reachable(client: Any, bucket: str) -> tuple[CheckResult, dict[str, str]]:
    item = "reachable"
    try:
        response = client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        headers = _headers(exc.response)
        status = _http_status(exc.response)
        return _refused(bucket, item, status, headers), headers
    except BotoCoreError as exc:
        # The class name only: botocore's messages quote endpoint URLs.
        return CheckResult(bucket, item, Status.FAIL, f"no answer ({type(exc).__name__})",
                           "check S3_ENDPOINT_URL and that this host reaches it; with "
                           "virtual-hosted addressing the bucket's host name must resolve"), {}
    return CheckResult(bucket, item, Status.PASS,
                       "the credentials are accepted and the bucket exists"), _headers(response)


def _refused(bucket: str, item: str, status: int, headers: dict[str, str]) -> CheckResult:
    if status == 404:
        return CheckResult(bucket, item, Status.FAIL, "no such bucket (404)",
                           "run `hairfluencer setup-storage` to create it, or set "
                           "S3_UPLOADS_BUCKET / S3_PROCESSED_BUCKET")
    if status in (301, 400) and headers.get("x-amz-bucket-region"):
        region = headers["x-amz-bucket-region"]
        return CheckResult(bucket, item, Status.FAIL, f"the bucket is in region {region} ({status})",
                           f"set S3_REGION={region}")
    if status == 403:
        return CheckResult(bucket, item, Status.FAIL, "access denied (403)",
                           "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and that the key may "
                           "use this bucket (a clock off by over 15 min is refused too: see "
                           "`clock skew`)")
    return CheckResult(bucket, item, Status.FAIL, f"refused ({status})",
                       "check S3_ENDPOINT_URL, S3_REGION and the credentials")


def _clock(bucket: str, headers: dict[str, str], now: Clock) -> CheckResult:
    item = "clock skew"
    received = now()
    if not headers:
        return CheckResult(bucket, item, Status.FAIL, "not checked: no answer from the server",
                           "see `reachable`")
    try:
        server = parsedate_to_datetime(headers["date"])
    except (KeyError, TypeError, ValueError):
        return CheckResult(bucket, item, Status.FAIL, "the server sent no usable Date header",
                           "check S3_ENDPOINT_URL (is it an S3 endpoint?)")
    skew = round((server - received).total_seconds())
    detail = f"server clock {skew:+d} s from this host's (limit ±{MAX_CLOCK_SKEW_SECONDS} s)"
    if abs(skew) > MAX_CLOCK_SKEW_SECONDS:
        return CheckResult(bucket, item, Status.FAIL, detail,
                           "synchronise this host's clock (NTP); presigned URLs lose the skew "
                           "from their life and SigV4 refuses requests beyond 15 min")
    return CheckResult(bucket, item, Status.PASS, detail)


def _addressing(settings: Settings, bucket: str, reached: bool) -> CheckResult:
    item = "addressing style"
    style = settings.s3_addressing_style
    if reached:
        return CheckResult(bucket, item, Status.PASS, f"{style}-style requests reach the bucket")
    other = "virtual" if style == "path" else "path"
    probe = S3Storage(replace(settings, s3_addressing_style=other)).client
    try:
        probe.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError):
        return CheckResult(bucket, item, Status.FAIL,
                           f"not determined: neither {style}- nor {other}-style requests "
                           "reach the bucket", "see `reachable`")
    return CheckResult(bucket, item, Status.FAIL,
                       f"{style}-style requests fail where {other}-style ones succeed",
                       f"set S3_ADDRESSING_STYLE={other}")


# -- presigned PUTs ---------------------------------------------------------

def _presigned_puts(storage: S3Storage, settings: Settings, bucket: str) -> list[CheckResult]:
    """Accepted with exactly the signed headers, refused when tampered with, refused
    again (412) once the object exists. Each attempt has its own key, so one that a
    lax provider accepts cannot turn the next into a 412. Written under CHECK_PREFIX,
    deleted after."""
    run = uuid.uuid4()
    data = f"hairfluencer storage check {run}".encode()
    keys: list[str] = []

    def sign(name: str) -> PresignedPut:
        keys.append(check_key(run, name))
        return storage.presign_put(bucket, keys[-1], content_type="application/octet-stream",
                                   content_length=len(data), checksum_sha256=sha256_b64(data),
                                   expires_in=60)

    results: list[CheckResult] = []
    try:
        with httpx.Client(timeout=settings.s3_timeout_seconds) as http:
            other_type = sign("tampered-type.bin")
            forged = sign("tampered-signature.bin")
            results.append(_tampered(
                bucket, _put(http, other_type.url, {**other_type.headers,
                                                    "Content-Type": "text/html"}, data),
                _put(http, _with_forged_signature(forged.url), forged.headers, data)))
            put = sign("presigned-put.bin")
            accepted = _put(http, put.url, put.headers, data)
            results.append(_accepted(bucket, accepted))
            if isinstance(accepted, int) and 200 <= accepted < 300:
                results.append(_if_none_match(bucket, _put(http, put.url, put.headers, data)))
            else:
                results.append(CheckResult(bucket, "If-None-Match", Status.FAIL,
                                           "not checked: the presigned PUT was not accepted",
                                           "see `presigned PUT accepted`"))
    finally:
        results.append(_cleanup(storage.client, bucket, f"{CHECK_PREFIX}{run}/", keys))
    return results


def _put(http: httpx.Client, url: str, headers: dict[str, str], data: bytes) -> int | str:
    """The status, or the error's class name (never the URL: it is a credential)."""
    try:
        return http.put(url, content=data, headers=headers).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def _tampered(bucket: str, other_type: int | str, forged: int | str) -> CheckResult:
    item = "tampered presigned PUT refused"
    detail = f"another Content-Type got {other_type}, an altered signature got {forged}"
    if other_type == 403 and forged == 403:
        return CheckResult(bucket, item, Status.PASS, detail)
    return CheckResult(bucket, item, Status.FAIL, detail + " (403 expected)",
                       "use a provider that verifies SigV4 presigned signatures and signed "
                       "headers: without it a client can upload any type or size")


def _with_forged_signature(url: str) -> str:
    base, _, query = url.partition("?")
    params = [(name, "0" * len(value) if name == "X-Amz-Signature" else value)
              for name, value in parse_qsl(query, keep_blank_values=True)]
    return f"{base}?{urlencode(params)}"


def _accepted(bucket: str, status: int | str) -> CheckResult:
    item = "presigned PUT accepted"
    detail = (f"with Content-Type, Content-Length, If-None-Match and x-amz-checksum-sha256 "
              f"signed: {status}")
    if isinstance(status, int) and 200 <= status < 300:
        return CheckResult(bucket, item, Status.PASS, detail)
    if isinstance(status, str):
        fix = "S3_PUBLIC_ENDPOINT_URL (presigned URLs are signed for it) must be reachable"
    elif status == 403:
        fix = ("the provider refuses a header the app signs, or S3_PUBLIC_ENDPOINT_URL names "
               "another host than clients use (the host is signed), or the clock is off")
    elif status in (400, 501):
        fix = ("the provider lacks a feature the app signs in (If-None-Match conditional "
               "writes or SHA-256 checksums): use a provider that supports both")
    else:
        fix = "check S3_PUBLIC_ENDPOINT_URL and S3_ADDRESSING_STYLE"
    return CheckResult(bucket, item, Status.FAIL, detail, fix)


def _if_none_match(bucket: str, status: int | str) -> CheckResult:
    item = "If-None-Match"
    detail = f"a second PUT to the same URL got {status}"
    if status == 412:
        return CheckResult(bucket, item, Status.PASS, detail + " (the URL is single-use)")
    return CheckResult(bucket, item, Status.FAIL, detail + " (412 expected)",
                       "use a provider that honours conditional writes (`If-None-Match: *`): "
                       "without them a leaked upload URL can overwrite a checked selfie")


def _cleanup(client: Any, bucket: str, prefix: str, keys: list[str]) -> CheckResult:
    item = "cleanup"
    try:
        for key in keys:
            client.delete_object(Bucket=bucket, Key=key)
        left = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0)
    except (ClientError, BotoCoreError) as exc:
        return CheckResult(bucket, item, Status.FAIL,
                           f"could not delete under {prefix} ({_code(exc)})",
                           f"delete the objects under {prefix} by hand; the key needs "
                           "s3:DeleteObject")
    if left:
        return CheckResult(bucket, item, Status.FAIL, f"{left} objects left under {prefix}",
                           f"delete the objects under {prefix} by hand")
    return CheckResult(bucket, item, Status.PASS, f"nothing left under {prefix}")


# -- configuration read back ------------------------------------------------

def _read(call: Callable[..., dict[str, Any]], bucket: str) -> dict[str, Any] | str:
    """The configuration, or the error code when there is none (or none readable)."""
    try:
        return call(Bucket=bucket)
    except ClientError as exc:
        return _code(exc)
    except BotoCoreError as exc:
        return type(exc).__name__


def _missing(bucket: str, item: str, code: str) -> CheckResult:
    if code in ("NotImplemented", "501"):
        return CheckResult(bucket, item, Status.FAIL, "the provider does not implement it",
                           "this provider cannot report it: ask the provider, or use one "
                           "that implements it")
    if code in ("AccessDenied", "403"):
        return CheckResult(bucket, item, Status.FAIL, "not readable with these credentials",
                           "let the key read the bucket's configuration, then check again")
    return CheckResult(bucket, item, Status.FAIL, f"not set ({code})", SETUP_FIX)


def _encryption(client: Any, settings: Settings, bucket: str) -> CheckResult:
    item = "default encryption"
    config = _read(client.get_bucket_encryption, bucket)
    if isinstance(config, str):
        return _missing(bucket, item, config)
    wanted = _encryption_rule(settings)["ApplyServerSideEncryptionByDefault"]
    rules = config.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    found = [r.get("ApplyServerSideEncryptionByDefault", {}) for r in rules]
    algorithms = ", ".join(f.get("SSEAlgorithm", "?") for f in found) or "none"
    for rule in found:
        key = rule.get("KMSMasterKeyID", "")
        if rule.get("SSEAlgorithm") == wanted["SSEAlgorithm"] and (
                "KMSMasterKeyID" not in wanted or key.endswith(wanted["KMSMasterKeyID"])):
            return CheckResult(bucket, item, Status.PASS, algorithms)
    return CheckResult(bucket, item, Status.FAIL,
                       f"{algorithms}, expected {wanted['SSEAlgorithm']}", SETUP_FIX)


_BLOCK_FLAGS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                "RestrictPublicBuckets")


def _public_access_block(client: Any, bucket: str) -> CheckResult:
    item = "public access blocked"
    config = _read(client.get_public_access_block, bucket)
    if isinstance(config, str):
        return _missing(bucket, item, config)
    flags = config.get("PublicAccessBlockConfiguration", {})
    off = [flag for flag in _BLOCK_FLAGS if flags.get(flag) is not True]
    if off:
        return CheckResult(bucket, item, Status.FAIL, "off: " + ", ".join(off), SETUP_FIX)
    return CheckResult(bucket, item, Status.PASS, "all four public access blocks are on")


def _tls_only(client: Any, settings: Settings, bucket: str) -> CheckResult:
    item = "TLS-only policy"
    config = _read(client.get_bucket_policy, bucket)
    if isinstance(config, dict) and denies_plain_http(config.get("Policy", ""), bucket):
        return CheckResult(bucket, item, Status.PASS,
                           "the bucket policy denies requests without TLS (aws:SecureTransport)")
    if settings.s3_endpoint_url.startswith("http://"):
        # setup-storage leaves it out on purpose: it would lock this very client out.
        return CheckResult(bucket, item, Status.SKIP,
                           "not applied: the endpoint is plain HTTP (use HTTPS in production)")
    if isinstance(config, str):
        return _missing(bucket, item, config)
    return CheckResult(bucket, item, Status.FAIL,
                       "the bucket policy has no Deny for aws:SecureTransport false", SETUP_FIX)


def denies_plain_http(policy_text: str, bucket: str) -> bool:
    """True when a statement of the policy denies every action on the bucket's objects
    to everyone when the request was not made over TLS."""
    try:
        policy = json.loads(policy_text)
    except (TypeError, ValueError):
        return False
    statements = policy.get("Statement", []) if isinstance(policy, dict) else []
    return any(_denies_plain_http(s, bucket)
               for s in (statements if isinstance(statements, list) else [statements]))


def _denies_plain_http(statement: Any, bucket: str) -> bool:
    if not isinstance(statement, dict) or statement.get("Effect") != "Deny":
        return False
    principal = statement.get("Principal")
    if principal != "*" and not (isinstance(principal, dict) and principal.get("AWS") == "*"):
        return False
    if not {"s3:*", "*"} & set(_as_list(statement.get("Action"))):
        return False
    if not {f"arn:aws:s3:::{bucket}/*", "*"} & set(_as_list(statement.get("Resource"))):
        return False
    condition = statement.get("Condition", {})
    secure = condition.get("Bool", {}).get("aws:SecureTransport") \
        if isinstance(condition, dict) else None
    return any(str(v).lower() == "false" for v in _as_list(secure))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _lifecycle(client: Any, bucket: str, wanted: list[dict[str, Any]]) -> CheckResult:
    item = "lifecycle"
    config = _read(client.get_bucket_lifecycle_configuration, bucket)
    if isinstance(config, str):
        return _missing(bucket, item, config)
    present = [_rule_shape(rule) for rule in config.get("Rules", [])]
    missing = [rule["ID"] for rule in wanted if _rule_shape(rule) not in present]
    if missing:
        return CheckResult(bucket, item, Status.FAIL,
                           "no rule as setup-storage makes it: " + ", ".join(missing),
                           SETUP_FIX + "; it replaces the bucket's lifecycle rules")
    return CheckResult(bucket, item, Status.PASS, "; ".join(_describe(r) for r in wanted))


def _rule_shape(rule: dict[str, Any]) -> tuple[str, str, str, str]:
    """What a rule does, whatever its ID and however the provider spells an empty filter."""
    rule_filter = rule.get("Filter", {"Prefix": rule.get("Prefix", "")}) or {"Prefix": ""}
    return (rule.get("Status", ""), json.dumps(rule_filter, sort_keys=True),
            json.dumps(rule.get("Expiration", {}), sort_keys=True),
            json.dumps(rule.get("AbortIncompleteMultipartUpload", {}), sort_keys=True))


def _describe(rule: dict[str, Any]) -> str:
    return f"{rule['ID']}: expire after {rule['Expiration']['Days']} d"


def _cors_item(client: Any, settings: Settings, bucket: str) -> CheckResult:
    item = "CORS"
    if not settings.cors_origins:
        return CheckResult(bucket, item, Status.SKIP,
                           "S3_CORS_ORIGINS is empty: no browser uploads are expected")
    config = _read(client.get_bucket_cors, bucket)
    if isinstance(config, str):
        return _missing(bucket, item, config)
    wanted = _cors(settings.cors_origins)["CORSRules"][0]
    rules = config.get("CORSRules", [])
    uncovered = [origin for origin in wanted["AllowedOrigins"]
                 if not any(_cors_covers(rule, origin, wanted) for rule in rules)]
    if uncovered:
        return CheckResult(bucket, item, Status.FAIL,
                           "no rule lets these origins PUT/GET with the signed headers: "
                           + ", ".join(uncovered), SETUP_FIX)
    return CheckResult(bucket, item, Status.PASS,
                       f"{len(wanted['AllowedOrigins'])} origins may PUT and GET")


def _cors_covers(rule: dict[str, Any], origin: str, wanted: dict[str, Any]) -> bool:
    origins = set(rule.get("AllowedOrigins", []))
    headers = {h.lower() for h in rule.get("AllowedHeaders", [])}
    return bool(origins & {origin, "*"}) \
        and set(wanted["AllowedMethods"]) <= set(rule.get("AllowedMethods", [])) \
        and ("*" in headers or {h.lower() for h in wanted["AllowedHeaders"]} <= headers)


# -- response details -------------------------------------------------------

def _headers(response: dict[str, Any]) -> dict[str, str]:
    return dict(response.get("ResponseMetadata", {}).get("HTTPHeaders", {}))


def _http_status(response: dict[str, Any]) -> int:
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "error"))
    return type(exc).__name__
