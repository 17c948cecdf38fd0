"""Try-on results in the processed bucket: rendering what fal returned, writing it
under the job's keys, keeping its retention tag in line with the job row, and
removing it.

The retention tag is what the bucket's lifecycle rule reads (results expire 7
days after they were written unless tagged `kept`). The row is the truth: a
change of `favorite` clears `result_tags`, and `sync_tags` (right away, and the
beat for any row still cleared) brings the objects in line. Un-favoriting copies
the objects onto themselves, so the lifecycle counts their age from then and can
never delete them before the `deleteAfter` the API reports.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass

from PIL import Image
from sqlalchemy import select

from shared.images.bare_jpeg import carries_only_pixels
from shared.images.sanitize import ImageRejected, SanitizedImage, sanitize
from shared.models import JobStatus, TryOn
from shared.services import Services
from shared.storage.base import ObjectMissing
from shared.storage.keys import KEPT, TEMPORARY, result_keys, retention_tags

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = (256, 256)
RESULT_FORMATS = ["JPEG", "PNG", "WEBP"]
BATCH = 500


class NotAnImage(Exception):
    """What fal returned is not an image we accept."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Rendered:
    result: SanitizedImage
    thumbnail: SanitizedImage


def render(data: bytes, max_pixels: int) -> Rendered:
    """fal's image without metadata, plus a thumbnail. A bare baseline JPEG (what fal
    sends) is kept byte for byte, decoded only at the thumbnail's scale, which still
    decodes every coefficient of it; anything else is re-encoded (bare_jpeg.py)."""
    try:
        with Image.open(io.BytesIO(data), formats=RESULT_FORMATS) as image:
            if image.width * image.height > max_pixels:
                raise NotAnImage("too many pixels")
            if carries_only_pixels(image, data):
                clean = SanitizedImage(data=data, width=image.width, height=image.height,
                                       sha256=hashlib.sha256(data).hexdigest())
                image.draft("RGB", THUMBNAIL_SIZE)
                image.load()
            else:
                image.load()
                clean = sanitize(image)
            thumb_image = image.convert("RGB")
            thumb_image.thumbnail(THUMBNAIL_SIZE)
            thumb = sanitize(thumb_image)
    except (OSError, SyntaxError, ValueError, ImageRejected, Image.DecompressionBombError):
        raise NotAnImage("not an image") from None
    return Rendered(clean, thumb)


def write(svc: Services, job: TryOn, rendered: Rendered) -> tuple[str, str]:
    """Write both objects (tagged temporary); the caller holds the job's row lock,
    so no other writer of these keys runs at the same time."""
    key, thumb_key = result_keys(job.user_id, job.id)
    for object_key, image in ((key, rendered.result), (thumb_key, rendered.thumbnail)):
        svc.result_store.put_bytes(object_key, image.data, content_type="image/jpeg",
                                   tags=retention_tags(TEMPORARY))
    return key, thumb_key


def delete_objects(svc: Services, user_id: str, job_id: str) -> None:
    """Both objects of a job, whether or not its row knew them (a writer that died
    after writing leaves objects its row never recorded)."""
    for key in result_keys(user_id, job_id):
        svc.result_store.delete(key)


def sync_tags(svc: Services, job_id: str) -> bool:
    """Bring a succeeded job's objects in line with its row; True when they are.

    The row is locked meanwhile, so a concurrent favorite change waits and syncs
    after us, in order."""
    with svc.sessions.begin() as session:
        job = session.scalars(select(TryOn).where(TryOn.id == job_id).with_for_update()) \
            .one_or_none()
        if job is None or job.status != JobStatus.SUCCEEDED or not job.result_key:
            return True
        wanted = KEPT if job.favorite else TEMPORARY
        if job.result_tags == wanted:
            return True
        for key in (job.result_key, job.thumbnail_key):
            if not key:
                continue
            try:
                if wanted == KEPT:
                    svc.result_store.set_tags(key, retention_tags(KEPT))
                else:
                    svc.result_store.renew(key, retention_tags(TEMPORARY))
            except ObjectMissing:
                log.error("result object of job %s is missing; nothing to tag", job.id)
        job.result_tags = wanted
    return True


def repair_tags(svc: Services) -> int:
    """The beat's pass: every succeeded job whose objects are not known to be in line."""
    with svc.sessions() as session:
        ids = list(session.scalars(select(TryOn.id).where(
            TryOn.status == JobStatus.SUCCEEDED, TryOn.result_tags.is_(None)).limit(BATCH)))
    for job_id in ids:
        sync_tags(svc, job_id)
    return len(ids)
