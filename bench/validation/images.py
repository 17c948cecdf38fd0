"""The test images: the astronaut fixture upscaled to 4032x3024 with seeded noise, as
JPEG and HEIC, plain and as a phone would write them (EXIF Orientation=6, Display P3).
Built once into bench/results/fixtures/."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, ImageCms

from bench.common.paths import REPO_ROOT, RESULTS_DIR

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "astronaut.jpg"
CACHE = RESULTS_DIR / "fixtures"
SIZE = (4032, 3024)
CONTENT_TYPES = {"jpeg": "image/jpeg", "jpeg-phone": "image/jpeg",
                 "heic": "image/heic", "heic-phone": "image/heic"}
# Display P3 colorants, D50-adapted (as in Apple's "Display P3" profile).
P3_D50 = {b"rXYZ": (0.51512, 0.24120, -0.00105), b"gXYZ": (0.29198, 0.69225, 0.04189),
          b"bXYZ": (0.15710, 0.06657, 0.78407)}


def display_p3_icc() -> bytes:
    """LittleCMS's sRGB matrix/TRC profile with the Display P3 colorants put in.

    Same sRGB transfer curve as real Display P3; a real wide-gamut profile, so
    sanitize's LittleCMS conversion does real work (an sRGB tag would be a no-op)."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", data[128:132])[0]
    for i in range(count):
        sig, offset, _size = struct.unpack(">4sII", data[132 + 12 * i:144 + 12 * i])
        if sig in P3_D50:
            values = [round(v * 65536) for v in P3_D50[sig]]
            data[offset + 8:offset + 20] = struct.pack(">3i", *values)
    data[84:100] = bytes(16)  # profile ID (MD5) no longer matches: zero means "not set"
    return bytes(data)


def _noisy_selfie() -> Image.Image:
    src = Image.open(FIXTURE).convert("RGB")
    side = SIZE[0]
    big = src.resize((side, side), Image.Resampling.BICUBIC)
    top = (side - SIZE[1]) // 2
    big = big.crop((0, top, side, top + SIZE[1]))
    rng = np.random.default_rng(20261123)
    arr = np.asarray(big, dtype=np.int16) + rng.normal(0, 4, (SIZE[1], SIZE[0], 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def build_images(regen: bool) -> dict[str, Path]:
    pillow_heif.register_heif_opener()
    CACHE.mkdir(parents=True, exist_ok=True)
    paths = {name: CACHE / f"selfie-{name}.{'jpg' if name.startswith('jpeg') else 'heic'}"
             for name in CONTENT_TYPES}
    if not regen and all(p.exists() for p in paths.values()):
        return paths
    t0 = time.monotonic()
    img = _noisy_selfie()
    icc = display_p3_icc()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display": the pixels are stored sideways
    exif[0x010F] = "bench"  # Make
    sideways = img.transpose(Image.Transpose.ROTATE_90)  # so that Orientation=6 puts it upright
    img.save(paths["jpeg"], format="JPEG", quality=92)
    sideways.save(paths["jpeg-phone"], format="JPEG", quality=92, exif=exif.tobytes(),
                  icc_profile=icc)
    img.save(paths["heic"], format="HEIF", quality=60)
    # pillow-heif turns EXIF orientation into the container's irot on save.
    sideways.save(paths["heic-phone"], format="HEIF", quality=60, exif=exif.tobytes(),
                  icc_profile=icc)
    print(f"built test images in {time.monotonic() - t0:.1f} s")
    return paths
