"""Micro-benchmarks of alternatives to parts of one presign. None of these is
implemented in the app: each compares the app's path with a leaner way."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import urllib.parse
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
from sqlalchemy import insert

from bench.common.database import pg_url
from bench.common.stats import time_interleaved
from bench.presign.request import CHECKSUM
from bench.presign.stack import REDIS_URL
from devstack.localstack import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from shared.access.erasure_lock import refuse_while_erasing
from shared.access.quota import QuotaService
from shared.core import audit
from shared.models import Upload
from shared.services import Services

WHATIF_USER = "bench-whatif"
INSERT_UPLOAD = ("INSERT INTO uploads (id, user_id, key, content_type, declared_size, declared_checksum,"
                 " status, created_at, url_expires_at, delete_after) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)")
INSERT_AUDIT = ("INSERT INTO audit_events (at, user_id, action, subject_type, subject_id, correlation_id,"
                " details) VALUES (%s,%s,%s,%s,%s,%s,%s)")


def what_if(app: Any, run_id: str, n: int) -> dict[str, Any]:
    ext = app.extensions["hairfluencer"]
    out: dict[str, Any] = {}
    out.update(signing(ext.svc, n))
    out.update(rate_limits(ext.quotas, f"bench-{run_id}-whatif", n))
    out.update(database(ext.svc, n))
    return out


def signing(svc: Services, n: int) -> dict[str, Any]:
    """The app's boto3 path, vs the same SigV4 query presign by hand."""
    s = svc.settings
    key = f"uploads/bench-x/{uuid.uuid4()}.jpg"
    host = s.presign_endpoint_url.split("://", 1)[1]

    def signing_key(date: str) -> bytes:
        k = hmac.new(b"AWS4" + SECRET_ACCESS_KEY.encode(), date.encode(), hashlib.sha256).digest()
        for part in (s.s3_region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        return k

    cached: dict[str, bytes] = {}

    def manual(cache: bool) -> str:
        now = datetime.now(UTC)
        amz, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        scope = f"{date}/{s.s3_region}/s3/aws4_request"
        path = f"/{s.uploads_bucket}/{urllib.parse.quote(key)}"
        headers = {"content-length": "2500000", "content-type": "image/jpeg", "host": host,
                   "if-none-match": "*", "x-amz-checksum-sha256": CHECKSUM}
        signed = ";".join(sorted(headers))
        q = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"{ACCESS_KEY_ID}/{scope}",
             "X-Amz-Date": amz, "X-Amz-Expires": "300", "X-Amz-SignedHeaders": signed}
        qs = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                      for k, v in sorted(q.items()))
        canonical = "\n".join(["PUT", path, qs, "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
                               signed, "UNSIGNED-PAYLOAD"])
        sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        k = (cached.get(date) or cached.setdefault(date, signing_key(date))) if cache \
            else signing_key(date)
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        return f"{s.presign_endpoint_url}{path}?{qs}&X-Amz-Signature={sig}"

    return time_interleaved({
        "sign: app path, boto3 presign_put": lambda: svc.upload_store.presign_put(
            key, content_type="image/jpeg", content_length=2_500_000,
            checksum_sha256=CHECKSUM, expires_in=300),
        "sign: hand-written SigV4 query presign": lambda: manual(False),
        "sign: hand-written SigV4, signing key cached per day": lambda: manual(True),
    }, n)


def rate_limits(quotas: QuotaService, user: str, n: int) -> dict[str, Any]:
    """The app's sequential EVALSHA calls (ip, user; the daily quota is counted in the
    database now) vs three in one pipeline."""
    def app_limits() -> None:
        quotas.check_ip_rate("127.0.0.1")
        quotas.check_user_rate(user)

    r = redis.Redis.from_url(REDIS_URL)
    script = r.register_script("return redis.call('incr', KEYS[1])")
    script(keys=["hf:limits:bench-whatif:x"])

    def pipelined3() -> None:
        p = r.pipeline(transaction=False)
        for _ in range(3):
            script(keys=["hf:limits:bench-whatif:x"], client=p)
        p.execute()

    try:
        return time_interleaved({
            "redis: app path, 3 sequential EVALSHA via limits": app_limits,
            "redis: one EVALSHA": lambda: script(keys=["hf:limits:bench-whatif:x"]),
            "redis: 3 EVALSHA in one pipeline": pipelined3,
        }, n)
    finally:
        r.delete("hf:limits:bench-whatif:x")
        r.close()


def _rows(now: datetime) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    uid = str(uuid.uuid4())
    return ((uid, WHATIF_USER, f"uploads/{WHATIF_USER}/{uid}.jpg", "image/jpeg", 2_500_000,
             CHECKSUM, "pending", now, now, now),
            (now, WHATIF_USER, "upload.issued", "upload", uid, None,
             json.dumps({"content_type": "image/jpeg", "size": 2_500_000})))


def database(svc: Services, n: int) -> dict[str, Any]:
    """The app's transaction (SQLAlchemy Core, shared/uploads/use_cases.presign) vs raw
    psycopg writing the same two rows."""
    now = datetime.now(UTC)
    columns = ("id", "user_id", "key", "content_type", "declared_size", "declared_checksum",
               "status", "created_at", "url_expires_at", "delete_after")

    def app_path() -> None:
        u, _ = _rows(now)
        with svc.engine.begin() as conn:
            refuse_while_erasing(conn, WHATIF_USER)
            conn.execute(insert(Upload).values(dict(zip(columns, u, strict=True))))
            audit.record(conn, at=now, user_id=WHATIF_USER, action="upload.issued",
                         subject_type="upload", subject_id=u[0],
                         content_type="image/jpeg", size=2_500_000)

    with psycopg.connect(pg_url(svc.settings.database_url)) as conn:
        def raw(pipeline: bool, synchronous_commit: bool = True) -> None:
            u, a = _rows(now)
            with conn.pipeline() if pipeline else contextlib.nullcontext():
                if not synchronous_commit:
                    conn.execute("SET LOCAL synchronous_commit = off")
                conn.execute(INSERT_UPLOAD, u)
                conn.execute(INSERT_AUDIT, a)
                conn.commit()

        out = time_interleaved({
            "db: app path, Core engine.begin(): erasure check + 2 rows (pre-ping)": app_path,
            "db: raw psycopg, 2 INSERT + COMMIT": lambda: raw(False),
            "db: raw psycopg, pipelined (1 round trip)": lambda: raw(True),
            "db: raw psycopg, pipelined, synchronous_commit=off": lambda: raw(True, False),
        }, n)
        conn.execute("DELETE FROM audit_events WHERE user_id = %s", (WHATIF_USER,))
        conn.execute("DELETE FROM uploads WHERE user_id = %s", (WHATIF_USER,))
        conn.commit()
    return out
