"""Is this JPEG already nothing but pixels? Then it can be kept byte for byte.

fal returns its results as JPEG (we ask for `output_format: jpeg`). Re-encoding a
result that carries no metadata would cost a second lossy generation and most of a
completion's CPU, and remove nothing. A result is kept as it came only when every
byte of it is accounted for as pixels:

- a baseline, single-scan JPEG in RGB or grey (Pillow parsed every marker before the
  scan: its APPn segments are in `applist`, a COM segment in `info["comment"]`);
- its only APPn segment is the 14-byte JFIF header, without an embedded thumbnail;
- after the scan header, the entropy-coded data holds no marker but restarts
  (`FF D0`–`FF D7`) and stuffed bytes (`FF 00`), and the file ends at its EOI.
  Inside entropy-coded data a `FF` byte is always followed by one of those, so any
  other `FF xx` there is a marker (a second scan, a trailing APPn or COM, data
  appended after EOI) and the result is re-encoded instead.

Anything else (EXIF, ICC, XMP, comments, progressive, CMYK, PNG, WebP) goes through
`sanitize`, as every upload does.
"""

from __future__ import annotations

import re

from PIL import Image

_SOS = b"\xff\xda"
_EOI = b"\xff\xd9"
_JFIF_HEADER_LENGTH = 14  # "JFIF\0", version, units, densities, thumbnail 0 x 0
# A marker other than a restart, a stuffed byte or a fill byte.
_OTHER_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_INFO_OF_METADATA = ("comment", "exif", "icc_profile", "xmp", "photoshop", "adobe",
                     "progressive", "progression")


def carries_only_pixels(image: Image.Image, data: bytes) -> bool:
    """True when `data` (which `image` was opened from, not yet loaded) is a bare
    baseline JPEG that can be stored as it is."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return False
    if any(key in image.info for key in _INFO_OF_METADATA):
        return False
    applist = getattr(image, "applist", [])
    if any(marker != "APP0" or not content.startswith(b"JFIF\0")
           or len(content) != _JFIF_HEADER_LENGTH for marker, content in applist):
        return False
    scan = data.find(_SOS)
    if scan < 0 or data.count(_SOS) != 1 or not data.endswith(_EOI):
        return False
    # The scan header (length, components, tables, spectral selection) comes first.
    header_length = int.from_bytes(data[scan + 2:scan + 4], "big")
    entropy_coded = data[scan + 2 + header_length:-len(_EOI)]
    return _OTHER_MARKER.search(entropy_coded) is None
