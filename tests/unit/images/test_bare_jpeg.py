"""A try-on result is kept byte for byte only when it is nothing but pixels
(shared/images/bare_jpeg.py); anything that could carry something else is re-encoded
by results.render, and what is not an image is refused either way."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.images.bare_jpeg import carries_only_pixels
from shared.tryons import results
from tests.conftest import fixture_bytes

MAX_PIXELS = 40_000_000


def photo() -> Image.Image:
    with Image.open(io.BytesIO(fixture_bytes("astronaut.jpg"))) as image:
        return image.convert("RGB")


def jpeg(image: Image.Image | None = None, **save: object) -> bytes:
    out = io.BytesIO()
    (image or photo()).save(out, format="JPEG", quality=90, **save)
    return out.getvalue()


def exif_with_gps() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 24.0)  # GPSLatitude
    return exif.tobytes()


def bare() -> bytes:
    return jpeg()


def with_segment_after_scan(data: bytes) -> bytes:
    """An APP1 segment between the entropy-coded data and EOI."""
    segment = b"\xff\xe1" + (2 + 9).to_bytes(2, "big") + b"GPS 48.85"
    return data[:-2] + segment + data[-2:]


def with_jfif_thumbnail(data: bytes) -> bytes:
    """The same JPEG whose JFIF header embeds a 1 x 1 thumbnail (3 bytes)."""
    assert data[2:4] == b"\xff\xe0"
    length = int.from_bytes(data[4:6], "big")
    header = bytearray(data[6:6 + length - 2])
    header[12:14] = b"\x01\x01"
    app0 = b"\xff\xe0" + (length + 3).to_bytes(2, "big") + bytes(header) + b"\x10\x20\x30"
    return data[:2] + app0 + data[4 + length:]


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_a_bare_baseline_jpeg_is_kept_byte_for_byte_with_a_thumbnail():
    data = bare()
    with opened(data) as image:
        assert carries_only_pixels(image, data)
    rendered = results.render(data, MAX_PIXELS)
    assert rendered.result.data == data
    assert (rendered.result.width, rendered.result.height) == photo().size
    assert max(rendered.thumbnail.width, rendered.thumbnail.height) == 256
    with opened(rendered.thumbnail.data) as thumb:
        assert thumb.format == "JPEG" and thumb.mode == "RGB"


@pytest.mark.parametrize("variant", [
    pytest.param(lambda: jpeg(exif=exif_with_gps()), id="exif-gps"),
    pytest.param(lambda: jpeg(comment=b"shot at 48.85N"), id="comment"),
    pytest.param(lambda: jpeg(icc_profile=b"\0" * 128), id="icc"),
    pytest.param(lambda: jpeg(progressive=True), id="progressive"),
    pytest.param(lambda: jpeg(photo().convert("CMYK")), id="cmyk"),
    pytest.param(lambda: bare() + b"appended after EOI", id="trailing-bytes"),
    pytest.param(lambda: with_segment_after_scan(bare()), id="segment-after-scan"),
    pytest.param(lambda: with_jfif_thumbnail(bare()), id="jfif-thumbnail"),
])
def test_anything_that_could_carry_more_than_pixels_is_re_encoded(variant):
    data = variant()
    with opened(data) as image:
        assert not carries_only_pixels(image, data)
    rendered = results.render(data, MAX_PIXELS)
    assert rendered.result.data != data
    with opened(rendered.result.data) as clean:
        assert clean.format == "JPEG" and clean.mode == "RGB"
        assert not {"exif", "comment", "icc_profile", "progressive"} & set(clean.info)
        assert [marker for marker, _ in clean.applist] == ["APP0"]
    assert rendered.result.data.endswith(b"\xff\xd9")
    assert b"48.85" not in rendered.result.data
    assert b"appended" not in rendered.result.data


def test_a_png_result_is_re_encoded_as_jpeg():
    out = io.BytesIO()
    photo().save(out, format="PNG")
    rendered = results.render(out.getvalue(), MAX_PIXELS)
    assert rendered.result.data[:2] == b"\xff\xd8"


def test_a_truncated_result_is_refused():
    data = bare()
    with pytest.raises(results.NotAnImage):
        results.render(data[:len(data) * 2 // 3], MAX_PIXELS)
