"""Deep-validation throughput: `inspect_and_decode` + `sanitize` on 12-megapixel selfies.

    .venv/bin/python bench/validation_bench.py              # ~2 min
    .venv/bin/python bench/validation_bench.py --seconds 4  # quicker
    .venv/bin/python bench/validation_bench.py --regen      # rebuild the test images

Test images (built once into bench/results/fixtures/, git-ignored): the
astronaut fixture upscaled to 4032x3024 with Gaussian noise (sigma 4, seeded) so
they do not compress trivially, as

- jpeg:       baseline JPEG q92, no metadata
- jpeg-phone: the same pixels stored sideways with EXIF Orientation=6 and a
              Display-P3 ICC profile (what a phone portrait shot looks like), so
              sanitize also rotates and colour-converts
- heic:       HEIC q60 (pillow-heif / x265), no metadata
- heic-phone: HEIC q60 with EXIF and the Display-P3 ICC profile

Each measurement runs in fresh processes (spawn) so peak RSS is per process:
one process, then two processes at once (per-core scaling on this 2-core box).
Each process decodes + sanitizes the same bytes in a loop for --seconds after one
warm-up image. --heif-single-thread adds HEIC runs with pillow-heif's DECODE_THREADS=1
(the library default is 4; these synthetic HEICs are one coded image, not the
512x512 tile grid an iPhone writes, so libheif has nothing to parallelise).
Results: printed, and bench/results/validation-<UTC stamp>.json (+ -latest).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as `python bench/validation_bench.py`: import the benchmarks as the package
    # `bench`, from the repository root, instead of from this folder.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.validation.cli import main  # noqa: E402

if __name__ == "__main__":
    main(__doc__)
