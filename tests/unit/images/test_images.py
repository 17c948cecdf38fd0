"""shared.images.sanitize: format checks, pixel caps, truncation, and metadata-free re-encoding.

All odd inputs (other formats, EXIF, ICC, bombs, polyglots) are generated here from the
three real photos, so nothing but those photos is committed.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms, ImageFile

from shared.images.sanitize import (
    ALLOWED_FORMATS,
    ImageRejected,
    InspectedImage,
    SanitizedImage,
    inspect_and_decode,
    sanitize,
)
from tests.conftest import fixture_bytes, fixture_image

REPO_ROOT = Path(__file__).resolve().parents[3]
MAX_PIXELS = 40_000_000  # the production default (MAX_IMAGE_PIXELS)

GPS_IFD = 0x8825
ORIENTATION = 0x0112
MAKE = 0x010F


# --------------------------------------------------------------------------- helpers




def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def rejection(data: bytes, content_type: str, max_pixels: int = MAX_PIXELS) -> ImageRejected:
    with pytest.raises(ImageRejected) as excinfo:
        inspect_and_decode(data, content_type, max_pixels)
    return excinfo.value


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_bomb(width: int, height: int, rows: int) -> bytes:
    """An 8-bit greyscale PNG whose IDAT inflates to ``rows`` all-zero rows.

    With rows == height it is a complete, valid image (a real deflate bomb: zeros
    compress ~1000:1); with fewer rows it is just a header that *claims* the size.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def jpeg_segments(data: bytes) -> list[int]:
    """Marker bytes of every segment before the entropy-coded data (SOS included)."""
    assert data[:2] == b"\xff\xd8"
    markers, pos = [], 2
    while pos < len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        markers.append(marker)
        if marker == 0xDA:  # start of scan: metadata can only come before this
            return markers
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
    raise AssertionError("no SOS marker")


def swapped_primaries_profile() -> bytes:
    """sRGB with its red and green primaries swapped: converting to sRGB swaps R and G.

    A real, LittleCMS-parsable RGB profile whose effect is impossible to miss, made by
    swapping the offsets of the rXYZ and gXYZ tags in LittleCMS's own sRGB profile.
    """
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    (count,) = struct.unpack(">I", profile[128:132])
    entries = {}
    for index in range(count):
        base = 132 + 12 * index
        signature, offset, size = struct.unpack(">4sII", profile[base : base + 12])
        entries[signature] = (base, offset, size)
    red, green = entries[b"rXYZ"], entries[b"gXYZ"]
    struct.pack_into(">4sII", profile, red[0], b"rXYZ", green[1], green[2])
    struct.pack_into(">4sII", profile, green[0], b"gXYZ", red[1], red[2])
    return bytes(profile)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    pa, pb = a.convert("RGB").tobytes(), b.convert("RGB").tobytes()
    return sum(abs(x - y) for x, y in zip(pa, pb, strict=True)) / len(pa)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return fixture_image("astronaut.jpg")


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return fixture_image("coffee.jpg")


@pytest.fixture(scope="module")
def heic_bytes(astronaut: Image.Image) -> bytes:
    return encode(astronaut, "HEIF", quality=80)


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    ("name", "size"),
    [("astronaut.jpg", (512, 512)), ("chelsea.jpg", (451, 300)), ("coffee.jpg", (600, 400))],
)
def test_fixture_photos_decode(name: str, size: tuple[int, int]) -> None:
    inspected, image = inspect_and_decode(fixture_bytes(name), "image/jpeg", MAX_PIXELS)

    assert inspected == InspectedImage(format="JPEG", width=size[0], height=size[1])
    assert image.size == size
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) is not None  # pixels are really there


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("PNG", "image/png"), ("WEBP", "image/webp"), ("JPEG", "image/jpeg")],
)
def test_other_formats_accepted_when_declared_correctly(
    astronaut: Image.Image, fmt: str, content_type: str
) -> None:
    inspected, image = inspect_and_decode(encode(astronaut, fmt), content_type, MAX_PIXELS)

    assert inspected == InspectedImage(format=fmt, width=512, height=512)
    assert image.size == (512, 512)


@pytest.mark.parametrize("content_type", ["image/heic", "image/heif"])
def test_heic_accepted_under_both_content_types(heic_bytes: bytes, content_type: str) -> None:
    inspected, image = inspect_and_decode(heic_bytes, content_type, MAX_PIXELS)

    assert inspected == InspectedImage(format="HEIF", width=512, height=512)
    assert sanitize(image).width == 512


def test_content_type_parameters_and_case_are_ignored() -> None:
    inspected, _ = inspect_and_decode(
        fixture_bytes("chelsea.jpg"), "Image/JPEG; charset=binary", MAX_PIXELS
    )
    assert inspected.format == "JPEG"


def test_allowed_formats_table() -> None:
    assert ALLOWED_FORMATS == {
        "image/jpeg": "JPEG",
        "image/png": "PNG",
        "image/webp": "WEBP",
        "image/heic": "HEIF",
        "image/heif": "HEIF",
    }


def test_multi_picture_jpeg_counts_as_jpeg(astronaut: Image.Image) -> None:
    # Phones write MPO (several JPEGs in one file) for portrait/depth shots.
    mpo = encode(astronaut, "MPO", save_all=True, append_images=[astronaut.rotate(90)])
    inspected, _ = inspect_and_decode(mpo, "image/jpeg", MAX_PIXELS)
    assert inspected.format == "JPEG"


def test_trailer_after_eoi_is_accepted_and_not_reencoded() -> None:
    # Samsung trailers / Motion Photos append data after the JPEG's EOI marker.
    trailer = b"\x00\x00\x00\x18ftypmp42" + b"MOTION-PHOTO-PAYLOAD" * 100
    data = fixture_bytes("coffee.jpg") + trailer
    _, image = inspect_and_decode(data, "image/jpeg", MAX_PIXELS)

    assert b"MOTION-PHOTO-PAYLOAD" not in sanitize(image).data


def test_pixel_cap_is_inclusive() -> None:
    data = fixture_bytes("astronaut.jpg")
    inspect_and_decode(data, "image/jpeg", 512 * 512)
    assert rejection(data, "image/jpeg", 512 * 512 - 1).code == "upload.too_many_pixels"


# --------------------------------------------------------------------------- rejected


@pytest.mark.parametrize("content_type", ["image/gif", "text/html", "", "image/svg+xml"])
def test_unsupported_content_type(content_type: str) -> None:
    assert rejection(fixture_bytes("coffee.jpg"), content_type).code == "upload.unsupported_type"


@pytest.mark.parametrize(
    ("fmt", "declared"),
    [
        ("PNG", "image/jpeg"),
        ("JPEG", "image/png"),
        ("WEBP", "image/jpeg"),
        ("PNG", "image/heic"),
        ("GIF", "image/png"),
    ],
)
def test_wrong_declared_type_is_a_mismatch(astronaut: Image.Image, fmt: str, declared: str) -> None:
    error = rejection(encode(astronaut, fmt), declared)
    assert error.code == "upload.type_mismatch"
    assert fmt in error.detail


def test_heic_declared_as_jpeg_is_a_mismatch(heic_bytes: bytes) -> None:
    assert rejection(heic_bytes, "image/jpeg").code == "upload.type_mismatch"


@pytest.mark.parametrize("content_type", sorted(ALLOWED_FORMATS))
def test_random_bytes_are_undecodable(content_type: str) -> None:
    noise = random.Random(1234).randbytes(50_000)
    assert rejection(noise, content_type).code == "upload.undecodable"


@pytest.mark.parametrize(
    ("prefix", "content_type"),
    [
        (b"\xff\xd8\xff\xe0", "image/jpeg"),  # a JPEG SOI + APP0 marker, then noise
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"RIFF\x00\x10\x00\x00WEBPVP8 ", "image/webp"),
    ],
)
def test_right_signature_then_noise_is_undecodable(prefix: bytes, content_type: str) -> None:
    noise = prefix + random.Random(99).randbytes(20_000)
    assert rejection(noise, content_type).code == "upload.undecodable"


def test_empty_body_is_undecodable() -> None:
    assert rejection(b"", "image/jpeg").code == "upload.undecodable"


def test_gif_javascript_polyglot_is_rejected() -> None:
    # "GIF89a/*" opens a JS comment; the GIF's width bytes *are* "/*", the payload
    # follows the GIF trailer. Valid as both a GIF and a script.
    width = struct.unpack("<H", b"/*")[0]
    gif = encode(Image.new("P", (width, 1)), "GIF")
    assert b"*/" not in gif
    polyglot = b"GIF89a" + gif[6:] + b"*/=alert(document.cookie);//"  # Pillow writes 87a
    assert polyglot.startswith(b"GIF89a/*")
    with Image.open(io.BytesIO(polyglot)) as check:  # prove it really is a GIF too
        assert check.format == "GIF"

    error = rejection(polyglot, "image/jpeg")
    assert error.code == "upload.type_mismatch"
    assert "GIF" in error.detail
    assert rejection(polyglot, "image/gif").code == "upload.unsupported_type"


def test_script_in_jpeg_comment_never_survives_sanitizing(astronaut: Image.Image) -> None:
    payload = b"<script>alert(1)</script>"
    data = encode(astronaut, "JPEG", comment=payload)
    _, image = inspect_and_decode(data, "image/jpeg", MAX_PIXELS)

    assert payload not in sanitize(image).data


@pytest.mark.parametrize("keep", [0.5, 0.9, -2])  # -2: everything but the EOI marker
def test_truncated_jpeg_is_undecodable(keep: float) -> None:
    data = fixture_bytes("astronaut.jpg")
    cut = int(len(data) * keep) if keep > 0 else len(data) + int(keep)
    assert rejection(data[:cut], "image/jpeg").code == "upload.undecodable"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "HEIF"])
def test_truncated_other_formats_are_undecodable(astronaut: Image.Image, fmt: str) -> None:
    content_type = {"PNG": "image/png", "WEBP": "image/webp", "HEIF": "image/heic"}[fmt]
    data = encode(astronaut, fmt)
    assert rejection(data[: len(data) * 2 // 3], content_type).code == "upload.undecodable"


def test_truncation_tolerance_must_stay_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        inspect_and_decode(fixture_bytes("coffee.jpg"), "image/jpeg", MAX_PIXELS)


# --------------------------------------------------------------------------- bombs


@pytest.fixture
def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.usefixtures("forbid_decoding")
def test_huge_png_header_rejected_without_decoding() -> None:
    bomb = png_bomb(30_000, 30_000, rows=4)  # claims 900 Mpx (2.7 GB as RGB)
    assert len(bomb) < 1_000

    started = time.perf_counter()
    error = rejection(bomb, "image/png")
    elapsed = time.perf_counter() - started

    assert error.code == "upload.too_many_pixels"
    assert elapsed < 0.5


@pytest.mark.usefixtures("forbid_decoding")
def test_real_deflate_bomb_below_pillows_limit_hits_our_cap() -> None:
    # 8000x8000 = 64 Mpx: Pillow itself would happily decode it (its guard starts at
    # ~89 Mpx); our 40 Mpx cap must stop it from the header.
    bomb = png_bomb(8_000, 8_000, rows=8_000)
    assert len(bomb) < 200_000  # ~64 MB of pixels in well under 1 MB

    error = rejection(bomb, "image/png")
    assert error.code == "upload.too_many_pixels"
    assert "8000x8000" in error.detail


@pytest.mark.usefixtures("forbid_decoding")
def test_huge_jpeg_header_rejected_without_decoding() -> None:
    data = bytearray(fixture_bytes("coffee.jpg"))
    sof = data.find(b"\xff\xc0")  # baseline SOF: length(2) precision(1) height(2) width(2)
    assert sof > 0
    struct.pack_into(">HH", data, sof + 5, 60_000, 60_000)
    assert rejection(bytes(data), "image/jpeg").code == "upload.too_many_pixels"


def test_bomb_check_keeps_memory_low(tmp_path: Path) -> None:
    """In a fresh interpreter, so the peak RSS is not hidden by earlier tests."""
    bomb_path = tmp_path / "bomb.png"
    bomb_path.write_bytes(png_bomb(30_000, 30_000, rows=30))
    script = textwrap.dedent(
        f"""
        import json, resource, sys, time
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from shared.images.sanitize import ImageRejected, inspect_and_decode
        data = open({str(bomb_path)!r}, "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        try:
            inspect_and_decode(data, "image/png", {MAX_PIXELS})
            code = None
        except ImageRejected as exc:
            code = exc.code
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024  # bytes vs KiB
        print(json.dumps({{"code": code, "grew": (after - before) * scale, "s": elapsed}}))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(completed.stdout)

    assert result["code"] == "upload.too_many_pixels"
    assert result["grew"] < 20 * 1024 * 1024, result  # decoding would need 900 MB+
    assert result["s"] < 0.5, result


# --------------------------------------------------------------------------- sanitize


@pytest.fixture(scope="module")
def phone_jpeg(coffee: Image.Image) -> bytes:
    """coffee.jpg stored sideways with everything a phone (or a snoop) might embed."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90° clockwise to display"
    exif[MAKE] = "HairfluencerTestPhone"
    gps = exif.get_ifd(GPS_IFD)
    gps.update({1: "N", 2: (52.0, 22.0, 7.5), 3: "E", 4: (4.0, 53.0, 21.0)})
    # Pixels as a sensor in landscape orientation would store them.
    stored = coffee.transpose(Image.Transpose.ROTATE_90)
    return encode(
        stored,
        "JPEG",
        quality=95,
        exif=exif,
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
        comment=b"SECRET-COMMENT",
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">SECRET-XMP</x:xmpmeta>',
    )


def test_phone_jpeg_really_carries_metadata(phone_jpeg: bytes) -> None:
    with Image.open(io.BytesIO(phone_jpeg)) as image:
        exif = image.getexif()
        assert exif[ORIENTATION] == 6
        assert exif.get_ifd(GPS_IFD)[1] == "N"
        assert {"icc_profile", "xmp", "comment", "exif"} <= set(image.info)


def test_sanitize_strips_all_metadata(phone_jpeg: bytes) -> None:
    _, image = inspect_and_decode(phone_jpeg, "image/jpeg", MAX_PIXELS)
    result = sanitize(image)

    with Image.open(io.BytesIO(result.data)) as out:
        assert out.format == "JPEG"
        assert len(out.getexif()) == 0
        assert set(out.info) <= {"jfif", "jfif_version", "jfif_unit", "jfif_density"}
    for secret in (b"Exif", b"HairfluencerTestPhone", b"ICC_PROFILE", b"SECRET", b"xmpmeta"):
        assert secret not in result.data
    # Only the JFIF header (APP0) may precede the image data: no APP1 (EXIF/XMP),
    # APP2 (ICC), APP13 (IPTC), COM, ...
    markers = jpeg_segments(result.data)
    assert [m for m in markers if 0xE0 <= m <= 0xEF or m == 0xFE] == [0xE0]


def test_sanitize_writes_baseline_jpeg(phone_jpeg: bytes) -> None:
    _, image = inspect_and_decode(phone_jpeg, "image/jpeg", MAX_PIXELS)
    markers = jpeg_segments(sanitize(image).data)
    assert 0xC0 in markers  # SOF0: baseline DCT
    assert 0xC2 not in markers  # SOF2: progressive


def test_sanitize_applies_orientation(phone_jpeg: bytes, coffee: Image.Image) -> None:
    inspected, image = inspect_and_decode(phone_jpeg, "image/jpeg", MAX_PIXELS)
    assert (inspected.width, inspected.height) == (400, 600)  # as stored: sideways

    result = sanitize(image)

    assert (result.width, result.height) == (600, 400)
    with Image.open(io.BytesIO(result.data)) as out:
        assert out.size == (600, 400)
        assert mean_abs_diff(out, coffee) < 6  # upright again, not mirrored or flipped


def test_sanitize_result_fields_and_hash(phone_jpeg: bytes) -> None:
    _, image = inspect_and_decode(phone_jpeg, "image/jpeg", MAX_PIXELS)
    result = sanitize(image)

    assert isinstance(result, SanitizedImage)
    assert result.sha256 == hashlib.sha256(result.data).hexdigest()
    assert sanitize(image).sha256 == result.sha256  # deterministic: safe to dedupe on


def test_sanitize_converts_embedded_icc_profile_to_srgb() -> None:
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    data = encode(red, "PNG", icc_profile=swapped_primaries_profile())
    _, image = inspect_and_decode(data, "image/png", MAX_PIXELS)

    with Image.open(io.BytesIO(sanitize(image).data)) as out:
        r, g, b = out.convert("RGB").getpixel((32, 32))  # type: ignore[misc]
    # The profile says this "red" is really sRGB green.
    assert g > 200 and r < 60 and b < 60


def test_broken_icc_profile_is_ignored_not_fatal() -> None:
    data = encode(Image.new("RGB", (32, 32), (10, 200, 30)), "PNG", icc_profile=b"not a profile")
    _, image = inspect_and_decode(data, "image/png", MAX_PIXELS)
    with Image.open(io.BytesIO(sanitize(image).data)) as out:
        r, g, b = out.getpixel((16, 16))  # type: ignore[misc]
    assert abs(r - 10) < 8 and abs(g - 200) < 8 and abs(b - 30) < 8


@pytest.mark.parametrize(
    "transparent",
    [
        Image.new("RGBA", (32, 32), (0, 0, 0, 0)),
        Image.new("LA", (32, 32), (0, 0)),
        Image.new("P", (32, 32), 0),  # palette index 0 marked transparent below
    ],
    ids=["RGBA", "LA", "P"],
)
def test_alpha_is_flattened_onto_white(transparent: Image.Image) -> None:
    params = {"transparency": 0} if transparent.mode == "P" else {}
    data = encode(transparent, "PNG", **params)
    _, image = inspect_and_decode(data, "image/png", MAX_PIXELS)

    with Image.open(io.BytesIO(sanitize(image).data)) as out:
        assert out.mode == "RGB"
        assert out.getpixel((16, 16)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    grey16 = Image.new("I;16", (32, 32), 40_000)  # 40000/65535 ≈ 61% grey
    _, image = inspect_and_decode(encode(grey16, "PNG"), "image/png", MAX_PIXELS)

    with Image.open(io.BytesIO(sanitize(image).data)) as out:
        r, g, b = out.getpixel((16, 16))  # type: ignore[misc]
    assert 145 < r < 165 and r == g == b


@pytest.mark.parametrize("mode", ["L", "CMYK", "1"])
def test_other_modes_become_rgb(coffee: Image.Image, mode: str) -> None:
    fmt, content_type = ("PNG", "image/png") if mode == "1" else ("JPEG", "image/jpeg")
    _, image = inspect_and_decode(encode(coffee.convert(mode), fmt), content_type, MAX_PIXELS)

    result = sanitize(image)

    with Image.open(io.BytesIO(result.data)) as out:
        assert out.mode == "RGB"
        assert out.size == (600, 400)


def test_sanitize_heic_keeps_container_rotation(coffee: Image.Image) -> None:
    # HEIF readers must ignore EXIF orientation and apply the container's irot/imir boxes
    # (libheif does, on decode); sanitize must not rotate a second time. pillow-heif
    # writes irot from EXIF orientation only when given raw EXIF bytes: passing an
    # Image.Exif object stores a sideways picture that every reader shows sideways.
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored = coffee.transpose(Image.Transpose.ROTATE_90)
    data = encode(stored, "HEIF", exif=exif.tobytes(), quality=90)
    _, image = inspect_and_decode(data, "image/heic", MAX_PIXELS)

    result = sanitize(image)

    assert (result.width, result.height) == (600, 400)
    with Image.open(io.BytesIO(result.data)) as out:
        assert mean_abs_diff(out, coffee) < 8


def test_sanitize_rejects_silly_quality(astronaut: Image.Image) -> None:
    with pytest.raises(ValueError):
        sanitize(astronaut, quality=100)
