"""Typed settings, read from the environment once.

Nothing else in the code base reads ``os.environ``: every process calls
``get_settings()`` (cached) and passes the object, or the parts it needs, down.
The README's environment table is generated from ``ENV_VARS`` below
(``hairfluencer env-table``), so the documentation cannot drift from the code.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from shared.core.media_hosts import MediaHosts

REPO_ROOT = Path(__file__).resolve().parents[2]
# Where development defaults keep their state: a checkout's git-ignored .devstack/;
# an installed wheel has no checkout (REPO_ROOT is then site-packages), so there it
# is the working directory's .devstack/, never a path inside site-packages.
STATE_DIR = (REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()) / ".devstack"
# Development-only HS256 secret shared by `hairfluencer dev` and `hairfluencer token`
# of one checkout; git-ignored. Production never reads it (see _dev_secret).
DEV_SECRET_FILE = STATE_DIR / "dev-jwt-secret"

MIB = 1024 * 1024


class ConfigError(ValueError):
    """The environment describes an impossible or unsafe configuration."""


def _env(name: str, default: str, doc: str, *, secret: bool = False) -> Any:
    # Secrets stay out of repr(): a Settings in a traceback, a log line or a Sentry
    # event's local variables must not carry them.
    return field(default=default, repr=not secret, metadata={"env": name, "doc": doc})


@dataclass(frozen=True)
class Settings:
    env: str = _env("HAIRFLUENCER_ENV", "development", "`development` or `production`; "
                     "production refuses development-only shortcuts (HS256 dev secret, SQLite, no FAL_KEY).")
    database_url: str = _env("DATABASE_URL", f"sqlite:///{STATE_DIR / 'hairfluencer.sqlite3'}",
                             "SQLAlchemy URL. PostgreSQL: `postgresql+psycopg://user@host/db`.", secret=True)
    redis_url: str = _env("REDIS_URL", "redis://127.0.0.1:6379/0",
                          "Redis for quotas, rate limits and idempotency keys.", secret=True)
    broker_url: str = _env("CELERY_BROKER_URL", "", "Celery broker; defaults to REDIS_URL.", secret=True)
    # Storage
    s3_endpoint_url: str = _env("S3_ENDPOINT_URL", "", "Internal S3 endpoint (empty = AWS).")
    s3_public_endpoint_url: str = _env("S3_PUBLIC_ENDPOINT_URL", "",
                                       "Endpoint the app reaches; presigned URLs are signed for "
                                       "this host (defaults to S3_ENDPOINT_URL).")
    s3_region: str = _env("S3_REGION", "us-east-1", "Region used for SigV4 signing.")
    s3_access_key_id: str = _env("AWS_ACCESS_KEY_ID", "", "Access key (empty = boto3 default chain).")
    s3_secret_access_key: str = _env("AWS_SECRET_ACCESS_KEY", "", "Secret key.", secret=True)
    s3_addressing_style: str = _env("S3_ADDRESSING_STYLE", "path", "`path` or `virtual`.")
    uploads_bucket: str = _env("S3_UPLOADS_BUCKET", "hairfluencer-uploads", "Private bucket for selfies.")
    processed_bucket: str = _env("S3_PROCESSED_BUCKET", "hairfluencer-processed",
                                 "Private bucket for try-on results.")
    sse_kms_key_id: str = _env("S3_SSE_KMS_KEY_ID", "", "Use SSE-KMS with this key (else SSE-S3).")
    server_side_encryption: str = _env("S3_SERVER_SIDE_ENCRYPTION", "AES256",
                                       "`AES256`, `aws:kms`, or `none` for endpoints without SSE.")
    cors_origins: str = _env("S3_CORS_ORIGINS", "", "Comma-separated origins allowed to PUT (web clients).")
    # Uploads
    presign_ttl_seconds: int = _env("PRESIGN_TTL_SECONDS", "300", "Upload URL lifetime, at most 300.")
    max_upload_bytes: int = _env("MAX_UPLOAD_BYTES", str(16 * MIB), "Largest selfie accepted.")
    max_image_pixels: int = _env("MAX_IMAGE_PIXELS", "40000000",
                                 "Largest pixel count decoded; larger images are rejected from "
                                 "their header (decompression bombs).")
    upload_retention_hours: int = _env("UPLOAD_RETENTION_HOURS", "24", "Selfie retention.")
    raw_purge_margin_seconds: int = _env("RAW_PURGE_MARGIN_SECONDS", "60",
                                         "Raw objects are deleted this long after their URL expired.")
    validation_stale_seconds: int = _env("VALIDATION_STALE_SECONDS", "20",
                                         "A validation no worker has claimed this long after "
                                         "confirm (or after its claim lapsed) is sent again.")
    face_detection: bool = _env("FACE_DETECTION_ENABLED", "false", "Reject selfies without a face "
                                "(needs the `face` extra).")
    clamd_address: str = _env("CLAMD_ADDRESS", "", "clamd socket path or tcp://host:port; empty = off.")
    nsfw_detector: str = _env("NSFW_DETECTOR", "", "NSFW hook; empty = off (no-op).")
    # Quotas (Redis)
    presign_daily_quota: int = _env("PRESIGN_DAILY_QUOTA", "50", "Presigns per user per day.")
    user_rate: str = _env("USER_RATE_LIMIT", "20/2seconds",
                          "Per-user request rate (10/s with bursts of 20), `limits` syntax.")
    ip_rate: str = _env("IP_RATE_LIMIT", "50/second", "Per-client-IP request rate.")
    trusted_proxy_count: int = _env("TRUSTED_PROXY_COUNT", "0",
                                    "How many proxies' X-Forwarded-For entries to trust.")
    # Try-ons and fal.ai
    fal_key: str = _env("FAL_KEY", "", "fal.ai API key (secret).", secret=True)
    fal_model_id: str = _env("FAL_MODEL_ID", "fal-ai/nano-banana/edit", "fal model endpoint.")
    fal_queue_host: str = _env("FAL_QUEUE_HOST", "", "fal queue host[:port] (empty = fal's own, "
                               "queue.fal.run); the dev stack points it at the emulator.")
    fal_webhook_jwks_url: str = _env("FAL_WEBHOOK_JWKS_URL",
                                     "https://rest.fal.ai/.well-known/jwks.json",
                                     "JWKS whose Ed25519 keys sign fal's webhooks.")
    fal_media_hosts: str = _env("FAL_MEDIA_HOSTS", "fal.media,*.fal.media",
                                "Comma-separated hosts results may be downloaded from "
                                "(`*.` = any subdomain; `host:port` for another port).")
    fal_media_expiration_seconds: int = _env("FAL_MEDIA_EXPIRATION_SECONDS", "3600",
                                             "fal deletes a result's output media from its "
                                             "CDN this long after the request (we copy it "
                                             "within seconds); payloads are not stored there.")
    public_base_url: str = _env("PUBLIC_BASE_URL", "", "Public base URL of this API; when set, "
                                "fal completes jobs by webhook, else by polling.")
    webhook_secret: str = _env("WEBHOOK_SECRET", "", "HMAC key for the job token in webhook URLs "
                               "(development derives one from the dev secret).", secret=True)
    tryon_daily_quota: int = _env("TRYON_DAILY_QUOTA", "20", "Try-ons per user per day.")
    upload_wait_seconds: int = _env("UPLOAD_WAIT_SECONDS", "60",
                                    "How long a job waits for its upload's validation.")
    fal_deadline_seconds: int = _env("FAL_DEADLINE_SECONDS", "120",
                                     "Overall deadline from the first fal submit.")
    fal_max_retries: int = _env("FAL_MAX_RETRIES", "3", "Retries of a retriable fal failure.")
    fal_retry_base_seconds: float = _env("FAL_RETRY_BASE_SECONDS", "2",
                                         "Backoff base: 2^n × base seconds, with jitter.")
    fal_poll_seconds: float = _env("FAL_POLL_SECONDS", "2", "Status poll interval without webhooks.")
    fal_in_doubt_seconds: int = _env("FAL_IN_DOUBT_SECONDS", "20",
                                     "A submission whose outcome is unknown (its worker died, or "
                                     "the connection broke after sending) is given this long to "
                                     "report by webhook before the job is submitted again; also "
                                     "the lease of a claim (at least 15).")
    result_max_bytes: int = _env("RESULT_MAX_BYTES", str(20 * MIB), "Largest result downloaded.")
    result_retention_days: int = _env("RESULT_RETENTION_DAYS", "7", "Result retention unless favorited.")
    result_url_ttl_seconds: int = _env("RESULT_URL_TTL_SECONDS", "300", "Lifetime of result URLs.")
    delete_selfie_after_job: bool = _env("DELETE_SELFIE_AFTER_JOB", "false",
                                         "Delete the selfie as soon as its try-on is done.")
    # Auth
    jwt_jwks_url: str = _env("JWT_JWKS_URL", "", "JWKS of the auth server (RS256/EdDSA).")
    jwt_issuer: str = _env("JWT_ISSUER", "", "Required `iss`.")
    jwt_audience: str = _env("JWT_AUDIENCE", "hairfluencer-api", "Required `aud`.")
    jwt_dev_secret: str = _env("JWT_DEV_SECRET", "", "HS256 secret, development only.", secret=True)
    jwt_jwks_fetch_timeout_seconds: float = _env("JWT_JWKS_FETCH_TIMEOUT_SECONDS", "5",
                                                 "Wall-clock bound of one JWKS fetch from its "
                                                 "start (DNS, connect, every read), at most 10.")
    jwt_jwks_refetch_seconds: float = _env("JWT_JWKS_REFETCH_SECONDS", "5",
                                           "A token naming a key not in the cached JWKS (a key "
                                           "just rotated in) starts a background fetch at most "
                                           "this often per process; it is answered 503 until "
                                           "one has run.")
    # Observability
    sentry_dsn: str = _env("SENTRY_DSN", "", "Sentry DSN; empty = off.", secret=True)
    log_level: str = _env("LOG_LEVEL", "INFO", "Root log level.")
    beat_interval_seconds: int = _env("BEAT_INTERVAL_SECONDS", "60", "How often cleanup runs "
                                      "(retention, raw purges, orphans; some every 5 or 15 passes).")
    reconcile_interval_seconds: float = _env("RECONCILE_INTERVAL_SECONDS", "5",
                                             "How often the beat takes over work nobody is doing: "
                                             "try-ons, validations, erasures, result tags.")
    # Timeouts that nest (shared/core/timeouts.py, docs/reliability.md): each is the
    # worst case of one call, from its start; their sum stays under gunicorn's 30 s.
    s3_timeout_seconds: float = _env("S3_TIMEOUT_SECONDS", "6",
                                     "Longest an S3 call may take (two attempts, each "
                                     "connect and read timeout a quarter of the rest).")
    redis_timeout_seconds: float = _env("REDIS_TIMEOUT_SECONDS", "2",
                                        "Longest a Redis command may take (one attempt: "
                                        "half to connect, half to read).")
    broker_timeout_seconds: float = _env("BROKER_TIMEOUT_SECONDS", "4",
                                         "Longest sending a task may take (two tries); a "
                                         "send that fails is left for the beat's reconciler.")
    db_connect_timeout_seconds: int = _env("DB_CONNECT_TIMEOUT_SECONDS", "3",
                                           "PostgreSQL connect timeout (libpq "
                                           "`connect_timeout`, whole seconds, at least 2).")
    db_pool_timeout_seconds: float = _env("DB_POOL_TIMEOUT_SECONDS", "2",
                                          "Longest wait for a free pooled connection.")
    db_statement_timeout_seconds: float = _env(
        "DB_STATEMENT_TIMEOUT_SECONDS", "30",
        "PostgreSQL statement_timeout of the app's connections: bounds a query where "
        "no Celery time limit runs (the threads pool); TCP keepalives find a server "
        "that stopped answering.")
    # Each process group's own scrape endpoint (shared/core/metrics_server.py)
    metrics_port: int = _env("METRICS_PORT", "0",
                             "Port of this process group's Prometheus endpoint, served by "
                             "its main process (gunicorn's master, a Celery worker, beat) "
                             "from its own PROMETHEUS_MULTIPROC_DIR; the API's public "
                             "/metrics then answers 404. 0 = none (the API serves /metrics).")
    metrics_address: str = _env("METRICS_ADDRESS", "127.0.0.1",
                                "Address the METRICS_PORT endpoint listens on: 0.0.0.0 "
                                "(or a private interface) for a scraper on another host, "
                                "on a network that is not public.")
    # Workers
    worker_memory_limit_mb: int = _env("WORKER_MEMORY_LIMIT_MB", "2048",
                                       "Address-space limit of each worker child (RLIMIT_AS), so "
                                       "a runaway decode fails inside its task; 0 = none.")

    @property
    def media_hosts(self) -> MediaHosts:
        return MediaHosts.parse(self.fal_media_hosts)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def presign_endpoint_url(self) -> str:
        return self.s3_public_endpoint_url or self.s3_endpoint_url

    @property
    def sse_params(self) -> dict[str, str]:
        """Extra arguments for every SDK write (SPEC §6: encryption on every write)."""
        if self.sse_kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.sse_kms_key_id}
        if self.server_side_encryption == "none":
            return {}
        return {"ServerSideEncryption": self.server_side_encryption}


ENV_VARS: list[tuple[str, str, str]] = [
    (f.metadata["env"], str(f.default), f.metadata["doc"]) for f in fields(Settings)
]


def _coerce(kind: object, raw: str, name: str) -> object:
    if kind in (int, "int"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer") from None
    if kind in (float, "float"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number") from None
    if kind in (bool, "bool"):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    return raw


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from a mapping (the process environment by default) and check them."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = environ.get(f.metadata["env"], str(f.default))
        values[f.name] = _coerce(f.type, raw, f.metadata["env"])
    settings = Settings(**values)  # type: ignore[arg-type]
    if not settings.jwt_dev_secret and not settings.jwt_jwks_url and not settings.is_production:
        settings = _with(settings, jwt_dev_secret=_dev_secret())
    if not settings.webhook_secret and not settings.is_production:
        settings = _with(settings, webhook_secret=_derive(settings.jwt_dev_secret or _dev_secret()))
    _check(settings)
    return settings


def _with(settings: Settings, **changes: object) -> Settings:
    return replace(settings, **changes)  # type: ignore[arg-type]


def _derive(secret: str) -> str:
    return hashlib.sha256(b"webhook:" + secret.encode()).hexdigest()


def _dev_secret() -> str:
    """Read the checkout's development secret, creating it on first use."""
    if not DEV_SECRET_FILE.exists():
        DEV_SECRET_FILE.parent.mkdir(parents=True, exist_ok=True)
        tmp = DEV_SECRET_FILE.with_suffix(".tmp")
        tmp.write_text(secrets.token_urlsafe(48))
        tmp.chmod(0o600)
        tmp.replace(DEV_SECRET_FILE)
    return DEV_SECRET_FILE.read_text().strip()


def _check(s: Settings) -> None:
    if s.env not in {"development", "production"}:
        raise ConfigError("HAIRFLUENCER_ENV must be development or production")
    if not 1 <= s.presign_ttl_seconds <= 300:
        raise ConfigError("PRESIGN_TTL_SECONDS must be between 1 and 300")
    if not 5 <= s.fal_media_expiration_seconds <= 7 * 24 * 3600:
        # Long enough to copy the result (seconds), short: fal's links are public.
        raise ConfigError("FAL_MEDIA_EXPIRATION_SECONDS must be between 5 and 604800")
    if s.fal_in_doubt_seconds < 15:
        # The claim lease must outlive a submit call that is still in flight.
        raise ConfigError("FAL_IN_DOUBT_SECONDS must be at least 15")
    if not 0 < s.jwt_jwks_fetch_timeout_seconds <= 10:
        # It may run inside a request: well under gunicorn's 30 s worker timeout.
        raise ConfigError("JWT_JWKS_FETCH_TIMEOUT_SECONDS must be above 0 and at most 10")
    if not 0 < s.jwt_jwks_refetch_seconds <= 60:
        raise ConfigError("JWT_JWKS_REFETCH_SECONDS must be above 0 and at most 60")
    if not 0 <= s.metrics_port <= 65535:
        raise ConfigError("METRICS_PORT must be between 0 and 65535")
    if s.db_connect_timeout_seconds < 2:
        raise ConfigError("DB_CONNECT_TIMEOUT_SECONDS must be at least 2 (libpq's minimum)")
    if s.s3_timeout_seconds < 2 or s.redis_timeout_seconds <= 0 or s.broker_timeout_seconds <= 0 \
            or s.db_pool_timeout_seconds <= 0 or s.db_statement_timeout_seconds <= 0:
        raise ConfigError("S3_TIMEOUT_SECONDS must be at least 2, and the Redis, broker "
                          "pool and statement timeouts positive")
    if s.is_production:
        if s.jwt_dev_secret:
            raise ConfigError("JWT_DEV_SECRET (HS256) is for development only")
        if not s.jwt_jwks_url or not s.jwt_issuer:
            raise ConfigError("production needs JWT_JWKS_URL and JWT_ISSUER")
        # The embedded defaults would otherwise stand in silently for a forgotten
        # setting: each host its own SQLite file, try-ons that can never run.
        if s.database_url.startswith("sqlite"):
            raise ConfigError("production needs DATABASE_URL (PostgreSQL); SQLite is the "
                              "development default")
        if not s.fal_key:
            raise ConfigError("production needs FAL_KEY")
        if s.public_base_url and len(s.webhook_secret) < 32:
            raise ConfigError("production webhooks need WEBHOOK_SECRET (32+ characters)")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
