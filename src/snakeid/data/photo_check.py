"""One photo of the `verify` stage: decode it under the pixel guard, check it, write its clean copy.

Separate from `verify` (which orders the photos, finds repeats and accounts for every one)
because this is what runs in the decode worker processes: it sees one photo and a few plain
settings, never the manifest, so each job and its result pickle cheaply. The pixel limit and
Pillow's check at it come from `snakeid.images`, shared with serving.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import imagehash
from PIL import Image, ImageFile, ImageOps

from snakeid.images import over_pixel_limit, set_pixel_limit, to_rgb


@contextmanager
def pillow_guard(max_pixels: int) -> Iterator[None]:
    """Pillow's own bomb check at our limit, bomb warnings as errors, no truncated images."""
    old_max, old_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():  # restores the warning filter `set_pixel_limit` sets
            set_pixel_limit(max_pixels)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_max, old_truncated


def decode_rgb(path: str | Path, max_pixels: int) -> Image.Image:
    """Fully decode one image: size checked from the header first, EXIF orientation, RGB.

    Raises `Image.DecompressionBombError` for too many pixels; anything else a broken file can
    raise otherwise. Call inside `pillow_guard`.
    """
    with Image.open(path) as im:
        if over_pixel_limit(im, max_pixels):
            raise Image.DecompressionBombError(
                f"{im.width}x{im.height} = {im.width * im.height} pixels"
            )
        im.load()
        return to_rgb(ImageOps.exif_transpose(im))


def downscale(im: Image.Image, shorter: int) -> Image.Image:
    """Resize so the shorter side is `shorter`; images already that small are left alone."""
    w, h = im.size
    if min(w, h) <= shorter:
        return im
    s = shorter / min(w, h)
    size = (shorter, max(1, round(h * s))) if w <= h else (max(1, round(w * s)), shorter)
    # reducing_gap: box-reduce first, then Lanczos; visually the same as pure Lanczos, much faster.
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


@dataclass(frozen=True)
class Job:
    src: str  # raw photo
    dst: str  # where its clean copy goes


@dataclass(frozen=True)
class Inspected:
    reason: str = ""  # empty: sound, clean copy written
    detail: str = ""
    pixel_hash: str = ""
    phash: int = 0
    width: int = 0
    height: int = 0
    sha256: str = ""


def inspect_photo(
    job: Job, *, max_pixels: int, min_side: int, resize_shorter: int, jpeg_quality: int
) -> Inspected:
    """Check one photo and, if it is sound, write its clean copy. Never raises for a bad file."""
    src = Path(job.src)
    if not job.src or not src.is_file():
        return Inspected("missing", f"no such file: {job.src}")
    if src.stat().st_size == 0:
        return Inspected("unreadable", "zero-byte file")
    with pillow_guard(max_pixels):
        try:
            rgb = decode_rgb(src, max_pixels)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # Pillow's own message quotes its internal limit (2 x ours for an error), so say ours.
            return Inspected("decompression_bomb", f"over max_pixels {max_pixels}: {e}")
        except Exception as e:  # a broken file can make any Pillow plugin raise anything
            return Inspected("unreadable", f"{type(e).__name__}: {e}")
    w, h = rgb.size
    if min(w, h) < min_side:
        return Inspected("too_small", f"{w}x{h}, shorter side < min_side {min_side}")

    # Exact identity is on decoded pixels, so a PNG and its lossless re-encode match.
    pixel_hash = hashlib.sha256(f"{w}x{h}:".encode() + rgb.tobytes()).hexdigest()
    small = downscale(rgb, resize_shorter)
    # pHash resizes to 32x32 anyway; hashing the downscaled copy is as good and much cheaper.
    phash = int(str(imagehash.phash(small)), 16)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=jpeg_quality)
    data = buf.getvalue()
    # Writing is outside the try above on purpose: a full disk is a crash, not a bad photo.
    dst = Path(job.dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    return Inspected(
        pixel_hash=pixel_hash,
        phash=phash,
        width=small.width,
        height=small.height,
        sha256=hashlib.sha256(data).hexdigest(),
    )
