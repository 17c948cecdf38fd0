"""`hairfluencer try-on IMAGE --style ID`: what the mobile app does, from a terminal.

presign → PUT (exactly the signed headers) → confirm → wait for `ready` → start the
try-on → poll with ETag/If-None-Match, honouring Retry-After → save the result.
Against `hairfluencer dev` it runs entirely offline (the fal emulator does the edit).
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import time
from pathlib import Path
from typing import Any

import click
import httpx

from shared.access.auth import issue_dev_token
from shared.core.config import get_settings

POLL_LIMIT_SECONDS = 180


class _Timer:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.steps: list[tuple[str, float]] = []

    def mark(self, step: str) -> None:
        now = time.perf_counter()
        self.steps.append((step, now - self.last))
        self.last = now

    def report(self) -> str:
        parts = ", ".join(f"{name} {secs * 1000:.0f} ms" for name, secs in self.steps)
        return f"{(self.last - self.start):.2f} s total ({parts})"


def _check(response: httpx.Response, expected: int) -> dict[str, Any]:
    if response.status_code != expected:
        try:
            error = response.json()["error"]
            detail = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError):
            detail = response.text[:200]
        raise click.ClickException(f"{response.request.method} {response.request.url.path} "
                                   f"answered {response.status_code} ({detail})")
    return response.json() if response.content else {}


def _poll(api: httpx.Client, path: str, done: set[str], label: str) -> dict[str, Any]:
    deadline = time.monotonic() + POLL_LIMIT_SECONDS
    etag, body = None, {}
    while time.monotonic() < deadline:
        response = api.get(path, headers={"If-None-Match": etag} if etag else {})
        if response.status_code == 429:
            time.sleep(int(response.headers.get("Retry-After", "1")))
            continue
        if response.status_code != 304:
            body = _check(response, 200)
            etag = response.headers.get("ETag")
            click.echo(f"  {label}: {body['status']}", err=True)
            if body["status"] in done:
                return body
        time.sleep(min(float(response.headers.get("Retry-After", "0.5")), 2.0))
    raise click.ClickException(f"{label} did not finish within {POLL_LIMIT_SECONDS} s")


def run_try_on(base_url: str, token: str, image: Path, style: str, out: Path,
               locale: str = "en") -> dict[str, Any]:
    data = image.read_bytes()
    content_type = mimetypes.guess_type(image.name)[0] or "image/jpeg"
    timer = _Timer()
    headers = {"Authorization": f"Bearer {token}", "Accept-Language": locale}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as api:
        issued = _check(api.post("/v1/uploads/presign", json={
            "contentType": content_type, "contentLength": len(data),
            "checksum": base64.b64encode(hashlib.sha256(data).digest()).decode()}), 201)
        timer.mark("presign")
        put = httpx.put(issued["uploadUrl"], content=data, headers=issued["headers"], timeout=60)
        if put.status_code != 200:
            raise click.ClickException(f"storage refused the upload: {put.status_code}")
        timer.mark("upload")
        _check(api.post("/v1/uploads/confirm", json={"key": issued["key"]}), 202)
        upload = _poll(api, f"/v1/uploads/{issued['uploadId']}", {"ready", "rejected"}, "upload")
        if upload["status"] == "rejected":
            raise click.ClickException(f"upload rejected: {upload['rejection']['message']}")
        timer.mark("validation")
        job = _check(api.post("/v1/try-ons", json={
            "uploadId": issued["uploadId"], "hairstyleId": style, "locale": locale},
            headers={"Idempotency-Key": issued["uploadId"] + style}), 202)
        click.echo(f"job {job['jobId']}", err=True)
        job = _poll(api, f"/v1/try-ons/{job['jobId']}", {"succeeded", "failed"}, "try-on")
        timer.mark("try-on")
        if job["status"] == "failed":
            raise click.ClickException(f"try-on failed: {job['error']['message']}")
        result = httpx.get(job["resultUrl"], timeout=60)
        result.raise_for_status()
        out.write_bytes(result.content)
        timer.mark("download")
    return {"jobId": job["jobId"], "path": str(out), "timings": timer.report()}


@click.command("try-on")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--style", required=True, help="A hairstyle id (GET /v1/hairstyles).")
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--user", default="dev-user", show_default=True,
              help="Development user (token signed with this checkout's dev secret).")
@click.option("--token", default=None, help="A bearer token to use instead.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to save the result (default: IMAGE-STYLE.jpg here).")
@click.option("--locale", default="en", type=click.Choice(["en", "es"]))
def try_on_command(image: Path, style: str, base_url: str, user: str, token: str | None,
                   out: Path | None, locale: str) -> None:
    """Upload IMAGE and try hairstyle STYLE on it, as the mobile app would."""
    token = token or issue_dev_token(get_settings(), user, 3600)
    out = out or Path(f"{image.stem}-{style}.jpg")
    outcome = run_try_on(base_url.rstrip("/"), token, image, style, out, locale)
    click.echo(f"job      {outcome['jobId']}")
    click.echo(f"timings  {outcome['timings']}")
    click.echo(f"saved    {outcome['path']}")
