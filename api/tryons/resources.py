"""/v1/try-ons and /v1/hairstyles."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify
from flask.views import MethodView

from api.boundary import Blueprint, idempotency_key
from api.context import app_services, current_user_id, list_endpoint, listed
from api.errors import error_object, request_locale
from api.tryons.schemas import (
    HairstyleListSchema,
    LocaleArgsSchema,
    TryOnListArgsSchema,
    TryOnListSchema,
    TryOnRequestSchema,
    TryOnSchema,
)
from shared.access.idempotency import Replay
from shared.models import JobStatus, TryOn
from shared.tryons import use_cases as tryons
from shared.tryons.hairstyles import catalogue

blp = Blueprint("try-ons", __name__, url_prefix="/v1", description="Hairstyle try-on jobs")
POLL_HINT_SECONDS = 2


def _url_window(ttl: int) -> int:
    """The window index. URLs signed inside one window stay valid past its end, so a
    client whose ETag still matches holds working URLs."""
    return int(app_services().svc.clock().timestamp() // max(30, ttl - 60))


def job_view(job: TryOn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "jobId": job.id, "status": job.status, "hairstyleId": job.hairstyle_id,
        "uploadId": job.upload_id, "createdAt": job.created_at, "updatedAt": job.updated_at,
        "favorite": job.favorite, "deleteAfter": job.delete_after,
    }
    links = tryons.result_links(app_services().svc, job)
    if links is not None:
        body["resultUrl"] = links.result_url
        if links.thumbnail_url:
            body["thumbnailUrl"] = links.thumbnail_url
        body["urlsExpireAt"] = links.expires_at
    if job.status == JobStatus.FAILED and job.error_code:
        body["error"] = error_object(job.error_code, request_locale())
    return body


def _etag_data(job: TryOn) -> dict[str, Any]:
    window = _url_window(app_services().svc.settings.result_url_ttl_seconds) \
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


@blp.route("/try-ons")
class TryOnCollection(MethodView):
    @blp.arguments(TryOnRequestSchema)
    @blp.response(202, TryOnSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Start a try-on job (honours an Idempotency-Key header)"""
        user_id, services = current_user_id(), app_services()

        def start(key: str | None) -> Replay:
            job = tryons.start(services.svc, user_id, upload_id=body["uploadId"],
                               key=body["key"], hairstyle_id=body["hairstyleId"],
                               prompt=body["prompt"], locale=body["locale"] or request_locale(),
                               idempotency_key=key,
                               daily_limit=services.quotas.limits.tryon_daily.amount)
            return Replay(202, TryOnSchema().dump(job_view(job)))

        answer = services.svc.idempotency.once(user_id, idempotency_key(), body, start,
                                               _without_urls)
        return _json_response(answer.body, answer.status)

    @list_endpoint(blp, TryOnListArgsSchema, TryOnListSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """The caller's try-ons, newest first, in cursor pages"""
        return listed(tryons.list_for_user, job_view, args)


@blp.route("/try-ons/<string:job_id>")
class TryOnItem(MethodView):
    @blp.etag
    @blp.response(200, TryOnSchema)
    def get(self, job_id: str) -> Any:
        """One job; poll it with If-None-Match (304 while nothing changed)"""
        job = tryons.get(app_services().svc, current_user_id(), job_id)
        headers = {}
        if job.status in (JobStatus.QUEUED, JobStatus.PROCESSING):
            g.retry_after = POLL_HINT_SECONDS  # also on a 304 (api/errors.py)
            headers["Retry-After"] = str(POLL_HINT_SECONDS)
        etag_data = _etag_data(job)
        # The tag a 304 repeats (api/errors.py): set_etag raises before it stores it.
        g.etag = blp._generate_etag(etag_data)
        blp.set_etag(etag_data)
        return job_view(job), 200, headers

    @blp.response(204)
    def delete(self, job_id: str) -> None:
        """Delete the result objects and the job (a job in flight is canceled at fal)"""
        tryons.remove(app_services().svc, current_user_id(), job_id)


@blp.route("/try-ons/<string:job_id>/favorite")
class Favorite(MethodView):
    @blp.response(200, TryOnSchema)
    def put(self, job_id: str) -> dict[str, Any]:
        """Keep the result past its default retention"""
        return job_view(tryons.set_favorite(app_services().svc, current_user_id(), job_id, True))

    @blp.response(200, TryOnSchema)
    def delete(self, job_id: str) -> dict[str, Any]:
        """Stop keeping the result (its default retention starts again now)"""
        return job_view(tryons.set_favorite(app_services().svc, current_user_id(), job_id, False))


@blp.route("/hairstyles")
class Hairstyles(MethodView):
    @blp.arguments(LocaleArgsSchema, location="query")
    @blp.response(200, HairstyleListSchema)
    def get(self, _args: dict[str, Any]) -> dict[str, Any]:
        """The style catalogue with localized names"""
        locale = request_locale()
        return {"items": [{"id": s.id, "name": s.name(locale), "names": s.names}
                          for s in catalogue().values()]}
