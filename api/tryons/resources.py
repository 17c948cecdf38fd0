"""/v1/try-ons and /v1/hairstyles."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, current_app, g, jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.context import current_user_id, quotas, services
from api.errors import error_object, request_locale
from api.tryons.schemas import (
    HairstyleListSchema,
    LocaleArgsSchema,
    TryOnListArgsSchema,
    TryOnListSchema,
    TryOnRequestSchema,
    TryOnSchema,
)
from shared.access.idempotency import IdempotencyStore, fingerprint
from shared.models import JobStatus, TryOn
from shared.tryons import use_cases as tryons
from shared.tryons.hairstyles import catalogue

blp = Blueprint("try-ons", __name__, url_prefix="/v1", description="Hairstyle try-on jobs")
POLL_HINT_SECONDS = 2


def _now() -> float:
    return time.time()


def _url_window(ttl: int) -> tuple[int, int]:
    """(window index, window length). URLs signed inside one window stay valid past
    its end, so a client whose ETag still matches holds working URLs."""
    length = max(30, ttl - 60)
    return int(_now() // length), length


def job_view(job: TryOn) -> dict[str, Any]:
    svc = services()
    body: dict[str, Any] = {
        "jobId": job.id, "status": job.status, "hairstyleId": job.hairstyle_id,
        "uploadId": job.upload_id, "createdAt": job.created_at, "updatedAt": job.updated_at,
        "favorite": job.favorite, "deleteAfter": job.delete_after,
    }
    if job.status == JobStatus.SUCCEEDED and job.result_key:
        ttl = svc.settings.result_url_ttl_seconds
        bucket = svc.settings.processed_bucket
        body["resultUrl"] = svc.storage.presign_get(bucket, job.result_key, expires_in=ttl)
        if job.thumbnail_key:
            body["thumbnailUrl"] = svc.storage.presign_get(bucket, job.thumbnail_key,
                                                           expires_in=ttl)
        body["urlsExpireAt"] = datetime.now(UTC) + timedelta(seconds=ttl)
    if job.status == JobStatus.FAILED and job.error_code:
        body["error"] = error_object(job.error_code, request_locale())
    return body


def _etag_data(job: TryOn) -> dict[str, Any]:
    window = _url_window(services().settings.result_url_ttl_seconds)[0] \
        if job.status == JobStatus.SUCCEEDED else None
    return {"id": job.id, "status": job.status, "updated": job.updated_at.isoformat(),
            "favorite": job.favorite, "window": window, "locale": request_locale()}


def _json_response(body: dict[str, Any], status: int) -> Response:
    """Already serialized (a replay must be byte-for-byte the original body)."""
    response = jsonify(body)
    response.status_code = status
    response.headers["Retry-After"] = str(POLL_HINT_SECONDS)
    return response


SIGNED_FIELDS = ("resultUrl", "thumbnailUrl", "urlsExpireAt")


def _without_urls(view: dict[str, Any]) -> dict[str, Any]:
    """What a replay may repeat for 24 h: never a signed URL (it lives 5 minutes and
    must not be stored past that); the app fetches the job for fresh ones."""
    return {k: v for k, v in view.items() if k not in SIGNED_FIELDS}


def _idempotency() -> IdempotencyStore:
    return current_app.extensions["hairfluencer.idempotency"]  # type: ignore[no-any-return]


@blp.route("/try-ons")
class TryOnCollection(MethodView):
    @blp.arguments(TryOnRequestSchema)
    @blp.response(202, TryOnSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Start a try-on job (honours an Idempotency-Key header)"""
        user_id = current_user_id()
        key = request.headers.get("Idempotency-Key")
        print_ = fingerprint(body)
        if key:
            key = key[:255]
            replay = _idempotency().begin(user_id, key, print_)
            if replay is not None:
                return _json_response(replay.body, replay.status)
        try:
            job = tryons.start(services(), user_id, upload_id=body["uploadId"],
                               key=body["key"], hairstyle_id=body["hairstyleId"],
                               prompt=body["prompt"], locale=body["locale"] or request_locale(),
                               idempotency_key=key,
                               charge=lambda: quotas().consume_tryon(user_id))
        except Exception:
            if key:
                _idempotency().abandon(user_id, key)
            raise
        view = TryOnSchema().dump(job_view(job))
        if key:
            _idempotency().complete(user_id, key, print_, 202, _without_urls(view))
        return _json_response(view, 202)

    @blp.arguments(TryOnListArgsSchema, location="query")
    @blp.response(200, TryOnListSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """The caller's try-ons, newest first, in cursor pages"""
        page = tryons.list_for_user(services(), current_user_id(), limit=args["limit"],
                                    cursor=args["cursor"], status=args["status"])
        return {"items": [job_view(j) for j in page.items], "nextCursor": page.next_cursor}


@blp.route("/try-ons/<string:job_id>")
class TryOnItem(MethodView):
    @blp.etag
    @blp.response(200, TryOnSchema)
    def get(self, job_id: str) -> Any:
        """One job; poll it with If-None-Match (304 while nothing changed)"""
        job = tryons.get(services(), current_user_id(), job_id)
        headers = {}
        if job.status in (JobStatus.QUEUED, JobStatus.PROCESSING):
            g.retry_after = POLL_HINT_SECONDS  # also on a 304 (api/errors.py)
            headers["Retry-After"] = str(POLL_HINT_SECONDS)
        blp.set_etag(_etag_data(job))
        return job_view(job), 200, headers

    @blp.response(204)
    def delete(self, job_id: str) -> None:
        """Delete the result objects and the job (a job in flight is canceled at fal)"""
        tryons.remove(services(), current_user_id(), job_id)


@blp.route("/try-ons/<string:job_id>/favorite")
class Favorite(MethodView):
    @blp.response(200, TryOnSchema)
    def put(self, job_id: str) -> dict[str, Any]:
        """Keep the result past its default retention"""
        return job_view(tryons.set_favorite(services(), current_user_id(), job_id, True))

    @blp.response(200, TryOnSchema)
    def delete(self, job_id: str) -> dict[str, Any]:
        """Stop keeping the result (its default retention starts again now)"""
        return job_view(tryons.set_favorite(services(), current_user_id(), job_id, False))


@blp.route("/hairstyles")
class Hairstyles(MethodView):
    @blp.arguments(LocaleArgsSchema, location="query")
    @blp.response(200, HairstyleListSchema)
    def get(self, _args: dict[str, Any]) -> dict[str, Any]:
        """The style catalogue with localized names"""
        locale = request_locale()
        return {"items": [{"id": s.id, "name": s.name(locale), "names": s.names}
                          for s in catalogue().values()]}
