"""Validation and sanitisation of uploaded selfie bytes.

Pure functions only: no S3, no database, no logging of user data. The upload pipeline is

    inspected, image = inspect_and_decode(raw_bytes, declared_content_type, max_pixels)
    sanitized = sanitize(image)

and only ``sanitized.data`` (a freshly encoded, metadata-free JPEG) ever leaves storage:
it is what we hand to fal.ai and what clients download. The raw upload is never served.

That is also why we do not reject bytes after the JPEG EOI marker: many phones append data
there (Samsung trailers, Google/Samsung Motion Photo MP4s), Pillow ignores it, and the
re-encode drops it. Rejecting it would refuse perfectly normal camera output.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass
from typing import Final

import pillow_heif
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

# HEIC/HEIF is what iPhones upload by default; Pillow cannot read it on its own.
# Registering is idempotent, but doing it once at import keeps it out of the hot path.
pillow_heif.register_heif_opener()

ALLOWED_FORMATS: Final[dict[str, str]] = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/heic": "HEIF",
    "image/heif": "HEIF",
}

# Formats we try only to *name* what a mismatched upload really is (the rejection detail);
# they are never decoded. Kept to a fixed list, because some of Pillow's more permissive
# plugins (TGA, for instance) would "identify" random bytes.
_IDENTIFIABLE_FORMATS: Final[tuple[str, ...]] = (
    *sorted(set(ALLOWED_FORMATS.values())),
    "GIF",
    "BMP",
    "TIFF",
)

# Pillow opens a multi-picture JPEG (phones write these for depth/portrait shots) as MPO.
# It is still a JPEG on the wire, so it satisfies a declared image/jpeg.
_FORMAT_ALIASES: Final[dict[str, str]] = {"MPO": "JPEG"}

# Everything Pillow and its codecs raise for malformed input. Listed explicitly (rather
# than ``except Exception``) so genuine bugs in our own code still surface as errors.
_DECODE_ERRORS: Final[tuple[type[BaseException], ...]] = (
    OSError,  # includes "image file is truncated" and libjpeg/libpng errors
    SyntaxError,  # Pillow's historical "not a valid file" signal in plugin parsers
    ValueError,  # e.g. PNG text/ICC chunks that decompress too far, bad HEIF boxes
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    RuntimeError,  # pillow-heif surfaces libheif failures this way
)

# Pillow's own bomb guard: the error above 2x MAX_IMAGE_PIXELS, and the warning above 1x
# (only ever raised, rather than printed, when warnings are configured as errors).
_BOMB_ERRORS: Final[tuple[type[BaseException], ...]] = (
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)

# The ICC profile we convert into. LittleCMS's built-in sRGB needs no file on disk.
_SRGB_PROFILE: Final = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))

_WHITE: Final = (255, 255, 255)


class ImageRejected(Exception):
    """The upload is not an acceptable image.

    ``code`` is a stable dotted identifier the API and clients can switch on;
    ``detail`` is for logs only and never contains user data (no bytes, no EXIF values).
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


# Stable rejection codes.
UNSUPPORTED_TYPE: Final = "upload.unsupported_type"
TYPE_MISMATCH: Final = "upload.type_mismatch"
TOO_MANY_PIXELS: Final = "upload.too_many_pixels"
UNDECODABLE: Final = "upload.undecodable"


@dataclass(frozen=True)
class InspectedImage:
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class SanitizedImage:
    data: bytes
    width: int
    height: int
    sha256: str


def expected_format(declared_content_type: str) -> str:
    """Map a Content-Type header value to the Pillow format it promises.

    Parameters (``; charset=...``) and case are ignored; anything outside the allow-list
    is rejected before we touch a single byte.
    """
    media_type = declared_content_type.split(";", 1)[0].strip().lower()
    try:
        return ALLOWED_FORMATS[media_type]
    except KeyError:
        raise ImageRejected(UNSUPPORTED_TYPE, "content type not allowed") from None


def inspect_and_decode(
    data: bytes, declared_content_type: str, max_pixels: int
) -> tuple[InspectedImage, Image.Image]:
    """Check that ``data`` really is the declared format, within the pixel budget, and decodes.

    Returns the header facts and a fully loaded image (pixels in memory, first frame).
    Raises :class:`ImageRejected` otherwise.
    """
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    _require_strict_decoding()
    fmt = expected_format(declared_content_type)
    if not data:
        raise ImageRejected(UNDECODABLE, "empty body")

    image = _open_header(data, fmt)
    width, height = image.size
    # Decided from the header alone, before any pixel is decoded: a 30000x30000 PNG is a
    # few hundred bytes on the wire but 2.7 GB once inflated.
    if width * height > max_pixels:
        image.close()
        raise ImageRejected(TOO_MANY_PIXELS, f"{width}x{height} exceeds {max_pixels} pixels")
    _load_pixels(image, fmt)
    return InspectedImage(format=fmt, width=width, height=height), image


def _require_strict_decoding() -> None:
    # Pillow's global switch would make truncated files decode "successfully" with grey
    # padding. Some other library in the process flipping it must not silently weaken us.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")


def _open_header(data: bytes, fmt: str) -> ImageFile.ImageFile:
    """Parse only the header, letting Pillow's own signature checks decide the format."""
    try:
        # Restricting ``formats`` means only the declared plugin may claim the bytes, so a
        # PNG labelled image/jpeg, or a GIF/JavaScript polyglot, never gets this far.
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except _BOMB_ERRORS as exc:
        # Pillow refuses > 2x MAX_IMAGE_PIXELS by itself at open time (and warns above 1x,
        # which becomes an exception under ``-W error``). Same outcome as our own cap.
        raise ImageRejected(TOO_MANY_PIXELS, "pillow decompression bomb guard") from exc
    except UnidentifiedImageError:
        raise _not_declared_format(data, fmt) from None
    except _DECODE_ERRORS as exc:
        raise ImageRejected(UNDECODABLE, f"{fmt} header: {type(exc).__name__}") from exc

    actual = _FORMAT_ALIASES.get(image.format or "", image.format)
    if actual != fmt:  # defensive: a plugin returning an unexpected subtype
        image.close()
        raise ImageRejected(TYPE_MISMATCH, f"declared {fmt}, found {actual}")
    return image


def _not_declared_format(data: bytes, fmt: str) -> ImageRejected:
    """Explain a failed open: a different known format (mismatch) or nothing at all."""
    actual = _identify(data)
    if actual is not None and actual != fmt:
        return ImageRejected(TYPE_MISMATCH, f"declared {fmt}, found {actual}")
    # Either unrecognisable bytes, or the right signature with a header so broken that
    # the plugin gave up: in both cases there is no image to be had.
    return ImageRejected(UNDECODABLE, f"not a readable {fmt}")


def _identify(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data), formats=list(_IDENTIFIABLE_FORMATS)) as probe:
            return _FORMAT_ALIASES.get(probe.format or "", probe.format)
    except _BOMB_ERRORS + _DECODE_ERRORS:  # UnidentifiedImageError is an OSError
        return None


def _load_pixels(image: ImageFile.ImageFile, fmt: str) -> None:
    """Decode the (first frame's) pixels; any codec complaint means the file is broken."""
    try:
        image.load()
    except _BOMB_ERRORS as exc:
        image.close()
        raise ImageRejected(TOO_MANY_PIXELS, "pillow decompression bomb guard") from exc
    except _DECODE_ERRORS as exc:
        image.close()
        raise ImageRejected(UNDECODABLE, f"{fmt} pixels: {type(exc).__name__}") from exc


def sanitize(image: Image.Image, quality: int = 90) -> SanitizedImage:
    """Produce the only copy of an upload that is ever served or sent to a model.

    The steps, in an order that matters:

    1. Apply EXIF orientation, because the metadata saying "rotate me" is dropped below;
       without this, portrait phone photos would come out sideways.
    2. Normalise exotic pixel modes (palette, 1-bit, 16-bit grey, premultiplied alpha) to
       plain 8-bit modes, keeping colour values in the image's own colour space.
    3. Convert to sRGB when an ICC profile is embedded (iPhones shoot Display P3, some
       apps save Adobe RGB or CMYK): the profile is stripped too, and untagged pixels are
       assumed sRGB everywhere, so skipping this would shift skin tones.
    4. Flatten any alpha onto white, because JPEG has no alpha and a transparent PNG
       would otherwise turn its transparent areas black.
    5. Copy the bare pixels into a brand-new image and encode a baseline JPEG. The new
       image carries no ``info``, so no EXIF (GPS!), XMP, ICC, comments, or maker notes
       can ride along: Pillow otherwise re-emits ``info["comment"]`` on JPEG save by
       itself. Baseline (not progressive) decodes everywhere, including fal.ai's side.
    """
    if not 1 <= quality <= 95:
        raise ValueError("quality must be within 1..95 (Pillow advises against > 95)")
    upright = apply_orientation(image)
    normalised = _normalise_mode(upright)
    srgb = _to_srgb(normalised, upright.info.get("icc_profile"))
    rgb = _flatten_alpha(srgb)
    data = _encode_jpeg(_pixels_only(rgb), quality)
    return SanitizedImage(
        data=data,
        width=rgb.width,
        height=rgb.height,
        sha256=hashlib.sha256(data).hexdigest(),
    )


_ORIENTATION_TAG = 0x0112


def apply_orientation(image: Image.Image) -> Image.Image:
    """Return ``image`` rotated/flipped as its EXIF Orientation asks (a copy, or itself).

    Public because face detection must see the upright picture too.
    """
    # HEIF needs nothing here: libheif applies the container's irot/imir on decode and
    # pillow-heif resets the EXIF orientation to 1, so nothing gets rotated twice.
    try:
        # Most photos need no turn; Pillow's exif_transpose would still copy the frame.
        if image.getexif().get(_ORIENTATION_TAG, 1) in (1, None):
            return image
        upright = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS:
        # Malformed EXIF is common in the wild. Keeping the stored orientation is a far
        # better outcome than refusing the selfie, and the EXIF is dropped anyway.
        return image
    return image if upright is None else upright


def _normalise_mode(image: Image.Image) -> Image.Image:
    """Bring any decoded mode to one of L, LA, RGB, RGBA, CMYK (8 bits per channel)."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return image
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    if mode.startswith("I") or mode == "F":
        # Pillow's direct I;16 -> L conversion clips at 255, turning a 16-bit grey PNG
        # almost entirely white; scale the 0..65535 range down instead.
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if mode == "1":
        return image.convert("L")
    if mode in ("La", "RGBa"):  # premultiplied alpha
        return image.convert("RGBA")
    if "transparency" in image.info:
        return image.convert("RGBA")
    return image.convert("RGB")  # YCbCr, LAB, HSV: no alpha to keep


def _to_srgb(image: Image.Image, icc_profile: object) -> Image.Image:
    """Convert colour to sRGB using the embedded profile; returns RGB or RGBA."""
    alpha = image.getchannel("A") if image.mode in ("LA", "RGBA") else None
    colour = image.convert(image.mode[:-1]) if alpha is not None else image
    converted = _apply_profile(colour, icc_profile)
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _apply_profile(colour: Image.Image, icc_profile: object) -> Image.Image:
    if not isinstance(icc_profile, bytes) or not icc_profile:
        return colour if colour.mode == "RGB" else colour.convert("RGB")
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        converted = ImageCms.profileToProfile(colour, source, _SRGB_PROFILE, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        # A corrupt profile, or one that does not match the pixels (an RGB profile on a
        # greyscale JPEG happens), cannot be honoured; treating the pixels as sRGB is the
        # same thing every browser falls back to.
        return colour.convert("RGB")
    if converted is None:  # only when inPlace=True, which we never ask for
        return colour.convert("RGB")
    return converted


def _flatten_alpha(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode != "RGBA":
        return image.convert("RGB")
    background = Image.new("RGBA", image.size, (*_WHITE, 255))
    return Image.alpha_composite(background, image).convert("RGB")


def _pixels_only(image: Image.Image) -> Image.Image:
    """A new image holding the pixels and nothing else (empty ``info``)."""
    clean = Image.new("RGB", image.size)
    clean.paste(image)
    return clean


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    # Explicit empty metadata on top of the empty ``info``: belt and braces against a
    # future Pillow release that starts copying more of ``info`` on save.
    image.save(
        out,
        format="JPEG",
        quality=quality,
        progressive=False,
        optimize=False,
        exif=b"",
        icc_profile=None,
    )
    return out.getvalue()
