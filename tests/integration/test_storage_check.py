"""`hairfluencer storage check` against LocalStack's S3 (which verifies presigned
signatures and honours If-None-Match, and stores bucket configuration)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from api.cli import main
from devstack.localstack import MotoS3
from shared.core.config import Settings
from shared.storage.check import CheckResult, Status, run_checks
from shared.storage.keys import CHECK_PREFIX
from shared.storage.s3 import S3Storage
from shared.storage.setup import _tls_only_policy, apply
from tests.conftest import SECRET_MARKERS, make_settings

ORIGINS = "https://app.example,https://admin.example"
ITEMS = ["reachable", "clock skew", "addressing style", "tampered presigned PUT refused",
         "presigned PUT accepted", "If-None-Match", "cleanup", "default encryption",
         "public access blocked", "TLS-only policy", "lifecycle", "CORS"]


def _settings(s3_endpoint: str, uploads: str, processed: str) -> Settings:
    return make_settings(s3_endpoint_url=s3_endpoint, uploads_bucket=uploads,
                         processed_bucket=processed, cors_origins=ORIGINS)


def _left_over(client: Any, *buckets: str) -> int:
    return sum(client.list_objects_v2(Bucket=b, Prefix=CHECK_PREFIX).get("KeyCount", 0)
               for b in buckets)


def _by_item(results: list[CheckResult], bucket: str) -> dict[str, CheckResult]:
    return {r.item: r for r in results if r.bucket == bucket}


@pytest.fixture(scope="module")
def set_up(s3_endpoint: str) -> Settings:
    """Buckets as `setup-storage` leaves them, with CORS origins configured, plus the
    TLS-only policy it skips on a plain-HTTP endpoint (LocalStack stores a policy
    without enforcing it, so reading it back is what can be checked here)."""
    suffix = uuid.uuid4().hex[:8]
    settings = _settings(s3_endpoint, f"hf-chk-up-{suffix}", f"hf-chk-proc-{suffix}")
    assert not [line for line in apply(settings) if "not applied" in line]
    client = S3Storage(settings).client
    client.put_bucket_policy(Bucket=settings.processed_bucket,
                             Policy=json.dumps(_tls_only_policy(settings.processed_bucket)))
    return settings


def test_buckets_set_up_pass_every_item(set_up: Settings) -> None:
    results = run_checks(set_up)

    for bucket in (set_up.uploads_bucket, set_up.processed_bucket):
        items = _by_item(results, bucket)
        assert list(items) == ITEMS
    assert [r.line() for r in results if not r.ok] == []
    assert all(r.status is Status.PASS for r in results if r.item != "TLS-only policy")
    # Read back: the policy is there on one bucket; on the other setup-storage left it
    # out because the endpoint is plain HTTP, which is reported, not passed.
    assert _by_item(results, set_up.processed_bucket)["TLS-only policy"].status is Status.PASS
    uploads_tls = _by_item(results, set_up.uploads_bucket)["TLS-only policy"]
    assert uploads_tls.status is Status.SKIP and "plain HTTP" in uploads_tls.detail
    assert "403" in _by_item(results, set_up.uploads_bucket)["tampered presigned PUT refused"].detail
    assert "412" in _by_item(results, set_up.uploads_bucket)["If-None-Match"].detail
    assert _left_over(S3Storage(set_up).client, set_up.uploads_bucket,
                      set_up.processed_bucket) == 0


def test_bare_buckets_fail_with_their_fixes(s3_endpoint: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = _settings(s3_endpoint, f"hf-bare-up-{suffix}", f"hf-bare-proc-{suffix}")
    client = S3Storage(settings).client
    for bucket in (settings.uploads_bucket, settings.processed_bucket):
        client.create_bucket(Bucket=bucket)
    # LocalStack, like AWS since 2023, gives a new bucket encryption and a public access
    # block; other providers do not: take them off one bucket.
    client.delete_public_access_block(Bucket=settings.processed_bucket)
    client.delete_bucket_encryption(Bucket=settings.processed_bucket)
    monkeypatch.setattr("api.cli.get_settings", lambda: settings)

    outcome = CliRunner().invoke(main, ["storage", "check"])

    assert outcome.exit_code == 1, outcome.output
    failed = {line.split(": ")[1] for line in outcome.output.splitlines()
              if line.startswith(f"FAIL {settings.processed_bucket}:")}
    assert failed == {"default encryption", "public access blocked", "lifecycle", "CORS"}
    uploads_failed = {line.split(": ")[1] for line in outcome.output.splitlines()
                      if line.startswith(f"FAIL {settings.uploads_bucket}:")}
    assert uploads_failed == {"lifecycle", "CORS"}
    for line in outcome.output.splitlines():
        if line.startswith("FAIL"):
            assert "— fix: run `hairfluencer setup-storage`" in line, line
    assert f"PASS {settings.uploads_bucket}: presigned PUT accepted" in outcome.output
    assert outcome.output.rstrip().endswith("24 items, 6 failed")
    assert not any(marker in outcome.output for marker in SECRET_MARKERS)
    assert _left_over(client, settings.uploads_bucket, settings.processed_bucket) == 0

    # setup-storage is the fix it names: afterwards the same check passes.
    assert not [line for line in apply(settings) if "not applied" in line]
    again = CliRunner().invoke(main, ["storage", "check"])
    assert again.exit_code == 0, again.output
    assert "FAIL" not in again.output


def test_missing_bucket_and_skewed_clock_fail(set_up: Settings, s3_endpoint: str) -> None:
    missing = _settings(s3_endpoint, set_up.uploads_bucket, f"hf-none-{uuid.uuid4().hex[:8]}")
    results = run_checks(missing, now=lambda: datetime.now(UTC) - timedelta(minutes=10))

    skew = _by_item(results, missing.uploads_bucket)["clock skew"]
    assert skew.status is Status.FAIL and "NTP" in skew.fix
    # The Date header counts whole seconds.
    assert 598 <= int(re.search(r"server clock \+(\d+) s", skew.detail)[1]) <= 601, skew.detail
    absent = _by_item(results, missing.processed_bucket)
    assert absent["reachable"].status is Status.FAIL
    assert "404" in absent["reachable"].detail and "setup-storage" in absent["reachable"].fix
    assert absent["other items"].status is Status.FAIL  # nothing further is claimed
    assert "presigned PUT accepted" not in absent


def test_cli_passes_on_set_up_buckets(set_up: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.cli.get_settings", lambda: set_up)

    outcome = CliRunner().invoke(main, ["storage", "check"])

    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.rstrip().endswith("24 items, 0 failed")
    assert not any(marker in outcome.output for marker in SECRET_MARKERS)


def test_a_provider_that_accepts_tampered_urls_fails(tmp_path: Path) -> None:
    """moto (the dev stack's fallback) does not verify presigned signatures: the check
    must say so, and still delete the objects the tampered PUTs created."""
    server = MotoS3().start(data_dir=tmp_path)
    try:
        settings = _settings(server.endpoint_url, "hf-moto-up", "hf-moto-proc")
        assert not [line for line in apply(settings) if "not applied" in line]
        results = run_checks(settings)

        for bucket in (settings.uploads_bucket, settings.processed_bucket):
            items = _by_item(results, bucket)
            tampered = items["tampered presigned PUT refused"]
            assert tampered.status is Status.FAIL, tampered
            assert "got 200" in tampered.detail and "verifies SigV4" in tampered.fix
            # Each attempt has its own key: the lax acceptance does not spill over.
            assert items["presigned PUT accepted"].status is Status.PASS
            assert items["cleanup"].status is Status.PASS
        assert _left_over(S3Storage(settings).client, settings.uploads_bucket,
                          settings.processed_bucket) == 0
    finally:
        server.stop()


def test_setup_storage_fails_the_release_on_a_bucket_that_does_not_exist(
        s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`setup-storage --no-create` (the release step) against a misspelt bucket name
    exits 1 naming the step, instead of passing a deploy that cannot store anything."""
    missing = f"hf-missing-{uuid.uuid4().hex[:8]}"
    settings = _settings(s3_endpoint, missing, f"{missing}-processed")
    monkeypatch.setattr("api.cli.get_settings", lambda: settings)
    result = CliRunner().invoke(main, ["setup-storage", "--no-create"])
    assert result.exit_code == 1, result.output
    assert f"{missing}: public access block: not applied (NoSuchBucket)" in result.output
    assert "bucket names or the credentials are wrong" in result.output
