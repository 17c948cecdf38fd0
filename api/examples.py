"""An example of every body in the OpenAPI document, by component name.

Taken from answers of the running system (ids, times and signatures replaced), so that
generated clients, Swagger UI and schemathesis' examples phase show what the API sends.
tests/unit/test_openapi.py validates each against its schema.
"""

from __future__ import annotations

from typing import Any

from shared.core.i18n import message_key, translate

UPLOAD_ID = "0b7f6c1e-3a2d-4c5b-9e8f-112233445566"
JOB_ID = "3b6bc467-f8a7-4f55-8fbc-487331cf08b3"
KEY = f"uploads/u_7Qm2/{UPLOAD_ID}.jpg"
CHECKSUM = "NwrbnLndA8qRHqMW+yJ0leAQlTmLwfcRiKOZUgm5yBo="
_SIGNED = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261201%2F"
           "eu-west-1%2Fs3%2Faws4_request&X-Amz-Date=20261201T152941Z&X-Amz-Expires=300")
_BUCKETS = "https://s3.eu-west-1.amazonaws.com"


def _message(code: str, *, retriable: bool | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "messageKey": message_key(code),
                            "message": translate(code, "en")}
    if retriable is not None:
        body["retriable"] = retriable
    return body


def _result_url(suffix: str) -> str:
    return (f"{_BUCKETS}/hairfluencer-processed/results/u_7Qm2/{JOB_ID}{suffix}.jpg"
            f"?response-cache-control=no-store&{_SIGNED}&X-Amz-SignedHeaders=host"
            "&X-Amz-Signature=EXAMPLE")


UPLOAD = {"uploadId": UPLOAD_ID, "key": KEY, "status": "ready", "contentType": "image/jpeg",
          "sizeBytes": 74962, "width": 1080, "height": 1350, "rejection": None,
          "createdAt": "2026-12-01T15:29:36.731917+00:00",
          "deleteAfter": "2026-12-02T15:29:36.731917+00:00"}
TRYON = {"jobId": JOB_ID, "uploadId": UPLOAD_ID, "hairstyleId": "bob", "status": "succeeded",
         "favorite": False, "createdAt": "2026-12-01T15:29:37.514490+00:00",
         "updatedAt": "2026-12-01T15:29:40.049621+00:00",
         "resultUrl": _result_url(""), "thumbnailUrl": _result_url("_thumb"),
         "urlsExpireAt": "2026-12-01T15:34:41.960181+00:00",
         "deleteAfter": "2026-12-08T15:29:40+00:00"}
HAIRSTYLE = {"id": "bob", "name": "Classic bob", "names": {"en": "Classic bob", "es": "Bob clásico"}}
ERROR_OBJECT = {**_message("upload.too_large", retriable=False),
                "correlationId": "9c1f2a7e4b5d4e0f8a1b2c3d4e5f6a7b"}

EXAMPLES: dict[str, Any] = {
    "PresignRequest": {"contentType": "image/jpeg", "contentLength": 74962,
                       "checksum": CHECKSUM, "locale": "en"},
    "PresignResponse": {
        "uploadId": UPLOAD_ID, "key": KEY, "method": "PUT", "maxBytes": 16777216,
        "uploadUrl": f"{_BUCKETS}/hairfluencer-uploads/{KEY}?{_SIGNED}&X-Amz-SignedHeaders="
                     "content-length%3Bcontent-type%3Bhost%3Bif-none-match%3B"
                     "x-amz-checksum-sha256&X-Amz-Signature=EXAMPLE",
        "headers": {"Content-Type": "image/jpeg", "Content-Length": "74962",
                    "If-None-Match": "*", "x-amz-checksum-sha256": CHECKSUM},
        "expiresAt": "2026-12-01T15:34:41.992896+00:00"},
    "ConfirmMetadata": {"width": 1080, "height": 1350},
    "ConfirmRequest": {"key": KEY, "eTag": '"3e25960a79dbc69b674cd4ec67a72c62"',
                       "metadata": {"width": 1080, "height": 1350}},
    "Upload": UPLOAD,
    "Rejection": _message("upload.no_face"),
    "UploadList": {"items": [UPLOAD], "nextCursor": f"1796138976731917.{UPLOAD_ID}"},
    "TryOnRequest": {"uploadId": UPLOAD_ID, "hairstyleId": "bob", "locale": "en"},
    "TryOn": TRYON,
    "JobError": _message("fal.content_policy", retriable=False),
    "TryOnList": {"items": [TRYON], "nextCursor": None},
    "Hairstyle": HAIRSTYLE,
    "HairstyleList": {"items": [HAIRSTYLE, {"id": "pixie-cut", "name": "Pixie cut",
                                            "names": {"en": "Pixie cut", "es": "Corte pixie"}}]},
    "Erasure": {"erasureId": "abaefdbe-2dd7-4791-8681-4d26a3b8004d", "status": "done",
                "requestedAt": "2026-12-01T15:21:20.264958+00:00",
                "completedAt": "2026-12-01T15:21:20.666489+00:00"},
    # DELETE /v1/me's answer: stored, not done yet (api/me.py).
    "Erasure.requested": {"erasureId": "abaefdbe-2dd7-4791-8681-4d26a3b8004d",
                          "status": "pending", "requestedAt": "2026-12-01T15:21:20.264958+00:00",
                          "completedAt": None},
    "Received": {"received": True},
    "ErrorObject": ERROR_OBJECT,
    "Error": {"error": ERROR_OBJECT},
    "FalWebhookDelivery": {
        "request_id": "764cabcf-b745-4b3e-ae38-1200304cf45b",
        "gateway_request_id": "764cabcf-b745-4b3e-ae38-1200304cf45b", "status": "OK",
        "payload": {"images": [{"url": "https://v3.fal.media/files/rabbit/result.png",
                                "content_type": "image/png"}], "description": ""}},
}
