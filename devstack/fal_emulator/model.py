"""The emulated model: the job faults, and the real edit of the downloaded input image."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import httpx
from PIL import Image, UnidentifiedImageError

from devstack.fal_emulator.jobs import Job, Outcome, compact_json, infra_error, model_error
from devstack.fal_emulator.media import edit_image

log = logging.getLogger(__name__)

CONTENT_POLICY_MSG = ("The content could not be processed because it contained material flagged by a "
                      "content checker.")
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_EDIT_CACHE_SIZE = 32


class EmulatedModel:
    """Runs one job: its fault if it has one, else download, edit and store on the media host."""

    def __init__(self, media_dir: Path, http: httpx.Client) -> None:
        self.media_dir = media_dir
        self.http = http
        self._lock = threading.Lock()
        self._edit_cache: OrderedDict[tuple[str, str, int, str], tuple[bytes, int, int]] = OrderedDict()

    def compute(self, job: Job, base_url: str) -> Outcome:
        """The job's outcome; result images are served from base_url's media host."""
        fault = job.fault
        if fault == "content_policy":
            return model_error(422, ["body", "prompt"], CONTENT_POLICY_MSG, "content_policy_violation",
                               retryable=False)
        if fault == "no_media":
            return model_error(422, ["body"], "The model did not generate any media. Try another prompt.",
                               "no_media_generated", retryable=True)
        if fault == "error_internal":
            return infra_error(500, "Internal server error", "internal_error")
        if fault == "malformed_result":
            body = {"images": [{"content_type": "image/jpeg", "file_name": "missing-url.jpg"}],
                    "description": None}
            return Outcome(200, compact_json(body), payload=body)
        if fault == "garbage_result":
            return Outcome(200, b"<html><body>upstream exploded</body></html>",
                           {"Content-Type": "text/html"}, payload=None,
                           payload_error="Response payload is not valid JSON")
        return self._edit(job, base_url)

    def _edit(self, job: Job, base_url: str) -> Outcome:
        args = job.arguments if isinstance(job.arguments, dict) else {}
        prompt = args.get("prompt")
        urls = args.get("image_urls")
        if not isinstance(prompt, str) or not prompt.strip():
            return model_error(422, ["body", "prompt"], "Field required", "missing")
        if not isinstance(urls, list) or not urls or not isinstance(urls[0], str):
            return model_error(422, ["body", "image_urls"], "Field required", "missing")
        output_format = str(args.get("output_format", "jpeg")).lower()
        if output_format not in CONTENT_TYPES:
            return model_error(422, ["body", "output_format"], "Input should be 'jpeg', 'png' or 'webp'",
                               "literal_error", input_value=output_format)
        try:
            num_images = max(1, min(4, int(args.get("num_images", 1))))
        except (TypeError, ValueError):
            num_images = 1
        url = urls[0]
        job.log("Downloading input image")
        try:
            response = self.http.get(url, timeout=job.download_timeout)
            data = response.content
            ok = response.status_code == 200 and bool(data)
        except httpx.HTTPError as exc:
            log.info("download for %s failed: %s", job.request_id, type(exc).__name__)
            ok, data = False, b""
        if not ok:
            return model_error(422, ["body", "image_urls", 0], "Failed to download the file. Please check "
                               "if the URL is accessible.", "file_download_error", input_value=url)
        images = []
        for variant in range(num_images):
            try:
                encoded, width, height = self._edit_cached(data, prompt, variant, output_format)
            except Image.DecompressionBombError:
                return model_error(422, ["body", "image_urls", 0], "Image too large", "image_too_large",
                                   input_value=url)
            except (UnidentifiedImageError, OSError, ValueError):
                return model_error(422, ["body", "image_urls", 0], "Failed to load the image. Please "
                                   "check if the image is a valid image file.", "image_load_error",
                                   input_value=url)
            extension = "jpg" if output_format == "jpeg" else output_format
            name = f"{job.request_id}-{variant}.{extension}"
            (self.media_dir / name).write_bytes(encoded)
            job.media_files.append(name)
            images.append({"url": f"{base_url}/media/{name}",
                           "content_type": CONTENT_TYPES[output_format], "file_name": name,
                           "file_size": len(encoded), "width": width, "height": height})
        body = {"images": images, "description": f"Emulated edit of the hair region: {prompt[:200]}"}
        return Outcome(200, compact_json(body), payload=body)

    def _edit_cached(self, data: bytes, prompt: str, variant: int,
                     output_format: str) -> tuple[bytes, int, int]:
        """edit_image, memoised on the downloaded bytes: load tests send one selfie many times.
        (The download itself always happens, so expired URLs still fail.)"""
        key = (hashlib.sha256(data).hexdigest(), prompt, variant, output_format)
        with self._lock:
            hit = self._edit_cache.get(key)
            if hit is not None:
                self._edit_cache.move_to_end(key)
                return hit
        result = edit_image(data, prompt, variant=variant, output_format=output_format)
        with self._lock:
            self._edit_cache[key] = result
            while len(self._edit_cache) > _EDIT_CACHE_SIZE:
                self._edit_cache.popitem(last=False)
        return result
