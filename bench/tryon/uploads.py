"""Setup: every user uploads one selfie through the real API (presign -> PUT ->
confirm), then waits until the worker validated all of them."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time

import httpx
import psycopg
from PIL import Image

from bench.common.database import pg_url
from bench.common.paths import REPO_ROOT

SOURCE_IMAGE = REPO_ROOT / "tests" / "fixtures" / "astronaut.jpg"


def selfie_bytes(side: int) -> bytes:
    """The test fixture scaled to side x side (a result from fal is ~1024 px): a
    realistic size for the worker's decode/re-encode of the result."""
    with Image.open(SOURCE_IMAGE) as im:
        im = im.convert("RGB").resize((side, side), Image.LANCZOS)
        out = io.BytesIO()
        im.save(out, "JPEG", quality=90)
    return out.getvalue()


def _upload(api: httpx.Client, s3: httpx.Client, token: str, data: bytes, checksum: str) -> str:
    h = {"Authorization": f"Bearer {token}"}
    r = api.post("/v1/uploads/presign", headers=h, json={
        "contentType": "image/jpeg", "contentLength": len(data), "checksum": checksum})
    r.raise_for_status()
    issued = r.json()
    s3.put(issued["uploadUrl"], content=data, headers=issued["headers"]).raise_for_status()
    api.post("/v1/uploads/confirm", headers=h, json={"key": issued["key"]}).raise_for_status()
    return str(issued["uploadId"])


def _wait_ready(db: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    rows: dict[str, int] = {}
    with psycopg.connect(pg_url(db), autocommit=True) as conn:
        while time.monotonic() < deadline:
            rows = dict(conn.execute("SELECT status, count(*) FROM uploads GROUP BY status").fetchall())
            if rows.get("ready", 0) >= count:
                return
            if rows.get("rejected"):
                raise RuntimeError(f"uploads rejected: {rows}")
            time.sleep(0.5)
    raise RuntimeError(f"uploads not ready in {timeout:.0f} s: {rows}")


def prepare_uploads(base: str, tokens: dict[str, str], data: bytes, db: str,
                    threads: int = 8, timeout: float = 180) -> dict[str, str]:
    """user -> upload id, once every upload is `ready`."""
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    uploads: dict[str, str] = {}
    errors: list[str] = []
    lock = threading.Lock()
    it = iter(list(tokens))

    def work() -> None:
        with httpx.Client(base_url=base, timeout=30) as api, httpx.Client(timeout=30) as s3:
            while True:
                with lock:
                    user = next(it, None)
                if user is None:
                    return
                try:
                    upload_id = _upload(api, s3, tokens[user], data, checksum)
                    with lock:
                        uploads[user] = upload_id
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{user}: {exc}")

    pool = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout)
    if errors:
        raise RuntimeError(f"upload preparation failed: {errors[:5]}")
    _wait_ready(db, len(tokens), timeout)
    return uploads
