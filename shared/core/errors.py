"""Domain errors: each carries a stable dotted code; one place (api/errors.py) maps
them to HTTP, and i18n.py turns their code into a localized message."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    status: int
    retriable: bool = False


# The catalogue of codes the API can answer with. The message of each lives in
# i18n.MESSAGES under the same key; tests check that both stay in step.
ERROR_KINDS: dict[str, ErrorKind] = {
    "auth.missing_token": ErrorKind(401),
    "auth.invalid_token": ErrorKind(401),
    "auth.expired_token": ErrorKind(401),
    "request.invalid": ErrorKind(422),
    "request.not_found": ErrorKind(404),
    "request.too_large": ErrorKind(413),
    "request.method_not_allowed": ErrorKind(405),
    # Refused by the HTTP server (api/gunicorn_worker.py) before the app reads them.
    "request.uri_too_long": ErrorKind(414),
    "request.headers_too_large": ErrorKind(431),
    "upload.not_found": ErrorKind(404),
    "upload.object_missing": ErrorKind(404, retriable=True),
    "upload.forbidden_key": ErrorKind(403),
    "upload.already_confirmed": ErrorKind(409),
    "upload.expired": ErrorKind(409),
    "upload.too_large": ErrorKind(413),
    "upload.unsupported_type": ErrorKind(415),
    "upload.size_mismatch": ErrorKind(422),
    "upload.type_mismatch": ErrorKind(422),
    "upload.checksum_mismatch": ErrorKind(422),
    "upload.not_ready": ErrorKind(409, retriable=True),
    "upload.validation_failed": ErrorKind(422, retriable=True),
    "upload.rejected": ErrorKind(422),
    "tryon.not_found": ErrorKind(404),
    "tryon.unknown_hairstyle": ErrorKind(422),
    "tryon.no_result": ErrorKind(409),
    # A job's failure only: its style was retired with `hairfluencer retire-hairstyle`
    # before the job was submitted (docs/reliability.md, "Catalogue changes").
    "tryon.hairstyle_retired": ErrorKind(422),
    "erasure.not_found": ErrorKind(404),
    "user.erasure_in_progress": ErrorKind(409, retriable=True),
    "idempotency.conflict": ErrorKind(409),
    "idempotency.in_progress": ErrorKind(409, retriable=True),
    "webhook.invalid": ErrorKind(401),
    "fal.timeout": ErrorKind(504, retriable=True),
    "fal.content_policy": ErrorKind(422),
    "fal.rejected": ErrorKind(422),
    "fal.no_result": ErrorKind(422, retriable=True),
    "fal.input_unreachable": ErrorKind(502, retriable=True),
    "fal.unavailable": ErrorKind(503, retriable=True),
    "fal.rate_limited": ErrorKind(503, retriable=True),
    "fal.unauthorized": ErrorKind(503),
    "fal.bad_response": ErrorKind(502, retriable=True),
    "fal.bad_result": ErrorKind(502, retriable=True),
    "quota.exceeded": ErrorKind(429, retriable=True),
    "rate.limited": ErrorKind(429, retriable=True),
    "service.unavailable": ErrorKind(503, retriable=True),
    "internal.error": ErrorKind(500, retriable=True),
}


class AppError(Exception):
    """A failure the client is told about, by code."""

    def __init__(self, code: str, *, retry_after: int | None = None, detail: str = "",
                 fields: dict[str, dict[str, list[str]]] | None = None) -> None:
        if code not in ERROR_KINDS:
            raise KeyError(f"unknown error code {code!r}")
        super().__init__(code)
        self.code = code
        self.retry_after = retry_after
        # For logs only; never shown to the client (may name internals).
        self.detail = detail
        # Shown to the client as `details`, as webargs shows schema errors: where
        # (json, query, headers) -> field -> messages. Names and classes, never values.
        self.fields = fields

    @property
    def kind(self) -> ErrorKind:
        return ERROR_KINDS[self.code]
