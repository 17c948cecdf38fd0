"""The emulated edit, done with Pillow, and the files of the media host (`GET /media/{file}`)."""

from __future__ import annotations

import colorsys
import contextlib
import hashlib
import io
import re
from pathlib import Path
from typing import Any

from PIL import Image, ImageColor, ImageDraw, ImageFont, ImageOps

_MEDIA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}

_HAIR_COLOURS = {"blonde": (240, 214, 120), "blond": (240, 214, 120), "platinum": (229, 228, 226),
                 "brunette": (92, 58, 33), "ginger": (200, 90, 30), "auburn": (145, 40, 20),
                 "copper": (184, 100, 50), "pink": (255, 105, 180), "grey": (160, 160, 160)}


def _tint(prompt: str, variant: int) -> tuple[int, int, int]:
    """The first colour word of the prompt ("pink", "blonde", any CSS name), else a hash colour."""
    for word in re.findall(r"[a-z]+", prompt.lower()):
        rgb = _HAIR_COLOURS.get(word)
        if rgb is None and len(word) > 2:
            with contextlib.suppress(ValueError):
                rgb = ImageColor.getrgb(word)[:3]
        if rgb is not None:
            hue, sat, val = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
            red, green, blue = colorsys.hsv_to_rgb((hue + 0.08 * variant) % 1.0, sat, val)
            return int(red * 255), int(green * 255), int(blue * 255)
    digest = hashlib.sha256(f"{prompt}\0{variant}".encode()).digest()
    red, green, blue = colorsys.hsv_to_rgb(digest[0] / 255, 0.85, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def edit_image(data: bytes, prompt: str, *, variant: int = 0, output_format: str = "jpeg",
               max_side: int = 1024) -> tuple[bytes, int, int]:
    """The emulated edit: the top third tinted by the prompt's colour, plus a label.

    Raises PIL.UnidentifiedImageError / OSError for undecodable input and
    PIL.Image.DecompressionBombError for absurdly large images.
    """
    with Image.open(io.BytesIO(data)) as source:
        source.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced size when possible
        image = ImageOps.exif_transpose(source).convert("RGB")
    image.thumbnail((max_side, max_side))
    width, height = image.size
    tint = _tint(prompt, variant)
    band_box = (0, 0, width, max(1, height // 3))
    band = image.crop(band_box)
    image.paste(Image.blend(band, Image.new("RGB", band.size, tint), 0.6), band_box)
    draw = ImageDraw.Draw(image)
    try:
        font: Any = ImageFont.load_default(size=max(10, height // 40))
    except (OSError, ImportError):  # Pillow without FreeType
        font = ImageFont.load_default()
    label = f"fal-emulator: {prompt[:48]}"
    left, top, right, bottom = draw.textbbox((6, height - 6), label, font=font, anchor="lb")
    draw.rectangle((left - 4, top - 4, right + 4, bottom + 4), fill=(0, 0, 0))
    draw.text((6, height - 6), label, font=font, fill=tint, anchor="lb")
    out = io.BytesIO()
    pil_format = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[output_format]
    image.save(out, format=pil_format, **({"quality": 90} if pil_format != "PNG" else {}))
    return out.getvalue(), width, height


def media_file(media_dir: Path, name: str) -> tuple[Path, str] | None:
    """The file the media host serves as /media/{name}, and its content type; None: 404."""
    file = media_dir / name
    if not _MEDIA_NAME.match(name) or not file.is_file():
        return None
    return file, _MEDIA_TYPES.get(file.suffix.lower(), "application/octet-stream")
