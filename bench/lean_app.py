"""A PROTOTYPE of a leaner presign path, for bench/presign_bench.py --lean.

NOT the application and not a proposal to copy as is: it exists only to measure how
much of the gap to the bare Flask endpoint the optimisations discussed in
docs/performance.md could close on this machine. Same request, same response
shape, same kinds of work as `POST /v1/uploads/presign`:

- HS256 JWT verified with PyJWT (audience, exp and sub required), as the app does;
- the three rate/quota checks (IP moving window, user moving window, daily presign
  fixed window) in ONE Redis round trip (one Lua script; the app makes 4 calls,
  hitting the IP window twice);
- the upload row and its audit row written by ONE statement (a data-modifying CTE,
  atomic on an autocommit connection: 1 round trip instead of the app's 5 with
  pre-ping, BEGIN, 2 INSERTs, COMMIT), through a per-thread psycopg connection
  (no ORM, no pool pre-ping; a broken connection is replaced on the next request);
- SigV4 query presigning written out with hmac/hashlib, signing key cached per
  day (the app calls botocore's generate_presigned_url); not checked against S3
  here, so treat its URL as illustrative;
- no marshmallow (hand validation of the four fields).

Configured from the same environment variables as the app.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import threading
import time
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import psycopg
import redis
from flask import Flask, Response, request

ENV = os.environ
SECRET = ENV.get("JWT_DEV_SECRET", "")
AUDIENCE = ENV.get("JWT_AUDIENCE", "hairfluencer-api") or None
DB_URL = ENV.get("DATABASE_URL", "").replace("postgresql+psycopg://", "postgresql://")
ENDPOINT = ENV.get("S3_PUBLIC_ENDPOINT_URL") or ENV.get("S3_ENDPOINT_URL", "")
REGION = ENV.get("S3_REGION", "us-east-1")
BUCKET = ENV.get("S3_UPLOADS_BUCKET", "hairfluencer-uploads")
ACCESS_KEY = ENV.get("AWS_ACCESS_KEY_ID", "")
SECRET_KEY = ENV.get("AWS_SECRET_ACCESS_KEY", "")
TTL = int(ENV.get("PRESIGN_TTL_SECONDS", "300"))
MAX_BYTES = int(ENV.get("MAX_UPLOAD_BYTES", str(16 * 1024 * 1024)))
RETENTION_H = int(ENV.get("UPLOAD_RETENTION_HOURS", "24"))
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp",
              "image/heic": "heic", "image/heif": "heif"}
USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _rate(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)\s*/\s*(\d*)\s*(second|minute|hour|day)s?", text.strip())
    if not m:
        raise ValueError(f"unsupported rate {text!r}")
    return int(m.group(1)), int(m.group(2) or 1) * UNITS[m.group(3)]


IP_RATE = _rate(ENV.get("IP_RATE_LIMIT", "50/second"))
USER_RATE = _rate(ENV.get("USER_RATE_LIMIT", "20/2seconds"))
DAILY = int(ENV.get("PRESIGN_DAILY_QUOTA", "50"))

# KEYS: ip window, user window, daily counter. ARGV: now, ip limit, ip expiry,
# user limit, user expiry, daily limit. Returns 0 (ok) or the index of the limit hit.
LIMITS_LUA = """
local now = tonumber(ARGV[1])
local function moving(key, limit, expiry)
  local entry = redis.call('lindex', key, limit - 1)
  if entry and tonumber(entry) >= now - expiry then return false end
  redis.call('lpush', key, now)
  redis.call('ltrim', key, 0, limit - 1)
  redis.call('expire', key, expiry)
  return true
end
if not moving(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3])) then return 1 end
if not moving(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5])) then return 2 end
local n = redis.call('incr', KEYS[3])
if n == 1 then redis.call('expire', KEYS[3], 86400) end
if n > tonumber(ARGV[6]) then return 3 end
return 0
"""

INSERT_BOTH = """
WITH u AS (
  INSERT INTO uploads (id, user_id, key, content_type, declared_size, declared_checksum,
                       status, created_at, url_expires_at, delete_after)
  VALUES (%(id)s, %(user)s, %(key)s, %(ct)s, %(size)s, %(checksum)s, 'pending',
          %(now)s, %(expires)s, %(delete_after)s)
  RETURNING id
)
INSERT INTO audit_events (at, user_id, action, subject_type, subject_id, correlation_id, details)
SELECT %(now)s, %(user)s, 'upload.issued', 'upload', u.id, %(cid)s, %(details)s::json FROM u
"""

app = Flask(__name__)
_redis = redis.Redis.from_url(ENV.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                              socket_timeout=2, socket_connect_timeout=2)
_limits = _redis.register_script(LIMITS_LUA)
_local = threading.local()
_keys: dict[str, bytes] = {}


def _db() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(DB_URL, autocommit=True)
        _local.conn = conn
    return conn


def _signing_key(date: str) -> bytes:
    key = _keys.get(date)
    if key is None:
        key = hmac.new(b"AWS4" + SECRET_KEY.encode(), date.encode(), hashlib.sha256).digest()
        for part in (REGION, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        _keys.clear()
        _keys[date] = key
    return key


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


def presign_put(key: str, content_type: str, length: int, checksum: str | None,
                now: datetime) -> tuple[str, dict[str, str]]:
    amz, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{date}/{REGION}/s3/aws4_request"
    host = urllib.parse.urlsplit(ENDPOINT).netloc
    path = f"/{BUCKET}/{urllib.parse.quote(key, safe='/-_.~')}"
    headers = {"Content-Type": content_type, "Content-Length": str(length), "If-None-Match": "*"}
    if checksum:
        headers["x-amz-checksum-sha256"] = checksum
    signed_headers = {k.lower(): v for k, v in headers.items()} | {"host": host}
    names = sorted(signed_headers)
    query = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"{ACCESS_KEY}/{scope}",
             "X-Amz-Date": amz, "X-Amz-Expires": str(TTL), "X-Amz-SignedHeaders": ";".join(names)}
    qs = "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(query.items()))
    canonical = "\n".join(["PUT", path, qs, "".join(f"{k}:{signed_headers[k]}\n" for k in names),
                           ";".join(names), "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    sig = hmac.new(_signing_key(date), to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ENDPOINT}{path}?{qs}&X-Amz-Signature={sig}", headers


def _error(status: int, code: str) -> Response:
    return Response(json.dumps({"error": {"code": code}}), status, mimetype="application/json")


@app.post("/v1/uploads/presign")
def presign() -> Response:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _error(401, "auth.missing_token")
    try:
        claims = jwt.decode(token.strip(), SECRET, algorithms=["HS256"], audience=AUDIENCE,
                            leeway=30, options={"require": ["exp", "sub"]})
    except jwt.PyJWTError:
        return _error(401, "auth.invalid_token")
    user = claims.get("sub")
    if not isinstance(user, str) or not USER_ID.match(user):
        return _error(401, "auth.invalid_token")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _error(422, "request.invalid")
    ct, size, checksum = body.get("contentType"), body.get("contentLength"), body.get("checksum")
    if not isinstance(ct, str) or type(size) is not int or not (
            checksum is None or isinstance(checksum, str)):
        return _error(422, "request.invalid")
    if ct not in EXTENSIONS:
        return _error(415, "upload.unsupported_type")
    if size > MAX_BYTES:
        return _error(413, "upload.too_large")
    if size < 1:
        return _error(422, "request.invalid")
    if checksum is not None:
        try:
            if len(base64.b64decode(checksum, validate=True)) != 32:
                raise ValueError
        except (binascii.Error, ValueError):
            return _error(422, "request.invalid")
    ip = request.remote_addr or "unknown"
    hit = _limits(keys=[f"hf:lean:ip:{ip}", f"hf:lean:user:{user}", f"hf:lean:presign:{user}"],
                  args=[time.time(), IP_RATE[0], IP_RATE[1], USER_RATE[0], USER_RATE[1], DAILY])
    if hit:
        return _error(429, "quota.exceeded" if hit == 3 else "rate.limited")
    now = datetime.now(UTC)
    upload_id = str(uuid.uuid4())
    key = f"uploads/{user}/{upload_id}.{EXTENSIONS[ct]}"
    expires = now + timedelta(seconds=TTL)
    params = {"id": upload_id, "user": user, "key": key, "ct": ct, "size": size,
              "checksum": checksum, "now": now, "expires": expires,
              "delete_after": now + timedelta(hours=RETENTION_H), "cid": uuid.uuid4().hex,
              "details": json.dumps({"content_type": ct, "size": size})}
    try:
        _db().execute(INSERT_BOTH, params)
    except psycopg.OperationalError:
        _local.conn = None  # reconnect on the next request
        return _error(503, "service.unavailable")
    url, headers = presign_put(key, ct, size, checksum, now)
    out = {"uploadId": upload_id, "key": key, "uploadUrl": url, "method": "PUT",
           "headers": headers, "expiresAt": expires.isoformat(), "maxBytes": MAX_BYTES}
    return Response(json.dumps(out), 201, mimetype="application/json")


@app.get("/healthz")
def healthz() -> Response:
    return Response('{"status": "ok"}', 200, mimetype="application/json")
