"""What the mobile app does, as the fault suite's load: presign, PUT with the
returned headers, confirm, start try-ons with an Idempotency-Key, poll. Like a
well-behaved app it retries what the API calls retriable (503, 429, a dropped
connection) with the same Idempotency-Key, so a retry never makes a second job."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import httpx

from shared.access.auth import issue_dev_token
from shared.core.config import Settings


class Refused(Exception):
    """The API kept refusing a request (the app would have shown an error)."""


def _retriable(response: httpx.Response) -> bool:
    """What the error envelope says (`retriable`), or a gateway error without one."""
    try:
        return bool(response.json()["error"]["retriable"])
    except (ValueError, KeyError, TypeError):
        return response.status_code in (502, 503, 504)


class AppClient:
    def __init__(self, base_url: str, settings: Settings) -> None:
        self.base_url = base_url
        self.settings = settings
        self._tokens: dict[str, str] = {}
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.s3 = httpx.Client(timeout=30)
        self.retries = 0

    def headers(self, user: str, **extra: str) -> dict[str, str]:
        if user not in self._tokens:
            self._tokens[user] = issue_dev_token(self.settings, user, 3600)
        return {"Authorization": f"Bearer {self._tokens[user]}", **extra}

    def call(self, method: str, path: str, user: str, *, attempts: int = 40,
             ok: tuple[int, ...] = (200, 201, 202, 204), **kwargs: Any) -> httpx.Response:
        extra = kwargs.pop("headers", {})
        last: Any = None
        for attempt in range(attempts):
            try:
                response = self.http.request(method, path, headers=self.headers(user, **extra),
                                             **kwargs)
            except httpx.TransportError as exc:
                last = exc
            else:
                if response.status_code in ok or not _retriable(response):
                    return response
                last = response
            self.retries += 1
            time.sleep(min(2.0, 0.2 * (attempt + 1)))
        raise Refused(f"{method} {path}: {last!r}")

    def upload(self, user: str, data: bytes, *, confirm: bool = True) -> str:
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        issued = self.call("POST", "/v1/uploads/presign", user, json={
            "contentType": "image/jpeg", "contentLength": len(data), "checksum": checksum}).json()
        for attempt in range(40):
            try:
                put = self.s3.put(issued["uploadUrl"], content=data, headers=issued["headers"])
            except httpx.TransportError:
                put = None
            if put is not None and put.status_code in (200, 412):  # 412: an earlier try landed
                break
            self.retries += 1
            time.sleep(min(2.0, 0.2 * (attempt + 1)))
        else:
            raise Refused("PUT to S3")
        if confirm:
            response = self.call("POST", "/v1/uploads/confirm", user, ok=(202, 409),
                                 json={"key": issued["key"]})
            assert response.status_code in (202, 409), response.text  # 409: a retry's twin won
        return str(issued["uploadId"])

    def start_try_on(self, user: str, upload_id: str, key: str, hairstyle: str = "bob") -> str:
        response = self.call("POST", "/v1/try-ons", user, headers={"Idempotency-Key": key},
                             ok=(202,), json={"uploadId": upload_id, "hairstyleId": hairstyle,
                                              "locale": "en"})
        if response.status_code != 202:
            raise Refused(f"try-on: {response.status_code} {response.text}")
        return str(response.json()["jobId"])
