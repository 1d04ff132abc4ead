"""Turning any decoded image into the 8-bit RGB picture a person would see, and the pixel limit.

Shared by `verify` (clean copies), training (`snakeid.data.dataset.load_rgb`) and serving
(`snakeid.model.preprocess`), so an alpha PNG or a 16-bit scan looks the same to all of them,
and a photo too big for `verify` is too big for serving too. Pillow and numpy only: the serving
install has no torch.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps

# The decompression-bomb guard's default: `verify.max_pixels` in params.yaml (a test checks they
# agree) and serving's `--max-pixels`; training never saw a bigger photo, so serving refuses them.
DEFAULT_MAX_PIXELS = 40_000_000


def set_pixel_limit(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb check use our limit, and fail instead of warning.

    Process-wide (Pillow only has a global); entry points call it once, `verify` inside a scope
    that restores both. Readers also check the header themselves (`over_pixel_limit`).
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def over_pixel_limit(im: Image.Image, max_pixels: int | None) -> bool:
    """True if the opened image has more than `max_pixels` pixels (None: no limit).

    Reads the size from the header, so call it between `Image.open` and `load`: a bomb is then
    refused before any pixel is decompressed.
    """
    return max_pixels is not None and im.width * im.height > max_pixels


def open_rgb(image: Image.Image, *, exif_transpose: bool = True) -> Image.Image:
    """EXIF orientation applied (optionally), then `to_rgb`."""
    return to_rgb(ImageOps.exif_transpose(image) if exif_transpose else image)


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert(
        "RGB"
    )


def _to_uint8(a: np.ndarray, full_scale: float | None) -> np.ndarray:
    """Map a high-bit-depth channel to 0..255 by its nominal range (or its own range if none)."""
    a = a.astype(np.float64)
    if full_scale is None:  # unknown range: stretch what is there
        lo, hi = float(a.min()), float(a.max())
        a, full_scale = a - lo, (hi - lo) or 1.0
    return np.clip(np.rint(a * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a person would see it.

    Transparency (alpha, or a palette's transparent index) is composited on white, not dropped
    (which would show whatever colour hides under transparent pixels, often black). 16-bit
    greyscale is scaled by 255/65535 rather than clipped at 255 (Pillow's `convert` clips, which
    turns most 16-bit photos white). 32-bit `I` images are read as 8-bit if every value fits, else
    as 16-bit if every value fits, else stretched; float `F` images as 0..1 if they fit, else
    stretched. ICC profiles are not applied. An RGB image is returned as is, not copied.
    """
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16"):
        grey = _to_uint8(np.asarray(im), 65535.0)
    elif mode == "I":
        a = np.asarray(im)
        lo, hi = int(a.min()), int(a.max())
        scale = 255.0 if lo >= 0 and hi <= 255 else 65535.0 if lo >= 0 and hi <= 65535 else None
        grey = _to_uint8(a, scale)
    elif mode == "F":
        a = np.asarray(im)
        grey = _to_uint8(a, 1.0 if a.min() >= 0 and a.max() <= 1 else None)
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        return _on_white(im)  # also P, L and RGB with a transparent index or colour
    else:  # L, 1, P, CMYK, YCbCr, ...: Pillow's conversion is right for these
        return im.convert("RGB")
    return Image.fromarray(grey, "L").convert("RGB")
