"""The `preprocess` block of `model_meta.json`, implemented with numpy and Pillow only.

Serving must not need torch, so it cannot call `snakeid.data.dataset.eval_transform`. Instead the
exporter writes that transform as data (`snakeid.data.dataset.eval_preprocess_spec`) and this module
replays it step by step exactly as torchvision v2 does on a PIL image: the same output-size
arithmetic, the same Pillow resize call, the same crop anchor, and float32 arithmetic in the
same order. tests/model/test_preprocess.py checks the two agree on real photos (max abs diff
<= 1e-6).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from snakeid.contract import PreprocessSpec

# the pixel limit lives in `snakeid.images`, shared with `verify`
from snakeid.images import DEFAULT_MAX_PIXELS, open_rgb, over_pixel_limit

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".mpo"}
)


class UnreadableImage(ValueError):
    """A file or upload that cannot be turned into a photo."""


class NotAnImage(UnreadableImage):
    """Pillow does not recognise the bytes as any image format."""


class CorruptImage(UnreadableImage):
    """A recognised format whose pixel data cannot be decoded (truncated, damaged)."""


class ImageTooLarge(UnreadableImage):
    """More pixels than the limit: a decompression bomb, or simply too big to be worth decoding."""


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to `shorter`.

    Mirrors torchvision's `_compute_resized_output_size`: the long side is truncated, not rounded,
    and computed as `shorter * long / short` in that order (float rounding decides some sizes).
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shorter, int(shorter * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's centre crop (anchor rounded half to even)."""
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return left, top, left + crop, top + crop


def load_image(
    source: str | Path | bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode a photo (first frame, original mode and EXIF kept), refusing decompression bombs.

    Raises an `UnreadableImage` subclass with a message fit to show a user.
    """
    if isinstance(source, bytes):
        data = source
    else:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UnreadableImage(f"cannot read file: {e.strerror or e}") from e
    if not data:
        raise NotAnImage("the file is empty")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise NotAnImage("not a recognised image file (expected JPEG, PNG, WebP, ...)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(_bomb_message(max_pixels)) from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise CorruptImage(f"image header could not be decoded: {e}") from e
    # Image.open read only the header; refuse before any pixel is decompressed.
    if over_pixel_limit(im, max_pixels):
        pixels = im.width * im.height
        raise ImageTooLarge(
            f"image is {im.width}x{im.height} = {pixels:,} pixels, over the limit of {max_pixels:,}"
        )
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(_bomb_message(max_pixels)) from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise CorruptImage(f"image data could not be decoded ({im.format}): {e}") from e
    return im


def _bomb_message(max_pixels: int | None) -> str:
    # Pillow's own check fired (its limit is global and may be lower than ours).
    limits = [n for n in (max_pixels, Image.MAX_IMAGE_PIXELS) if n is not None]
    return f"image has more pixels than the limit of {min(limits):,} (a decompression bomb?)"


def to_rgb(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """EXIF orientation (if the spec asks) and RGB, as `snakeid.data.dataset.load_rgb` does."""
    return open_rgb(image, exif_transpose=spec.exif_transpose)


def preprocess(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """One image -> float32 array (3, crop, crop), identical to `eval_transform` on it."""
    image = to_rgb(image, spec)
    new_w, new_h = resized_size(image.width, image.height, spec.resize_shorter)
    if (new_w, new_h) != image.size:
        # torchvision v2 Resize(antialias=True) on a PIL image is exactly this call.
        image = image.resize((new_w, new_h), resample=Image.Resampling.BILINEAR)
    image = image.crop(center_crop_box(new_w, new_h, spec.crop))
    x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)  # (3, H, W)
    # Same float32 operations, same order, as ToDtype(scale=True) then Normalize.
    x = x.astype(np.float32) * np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    return (x - mean) / std
