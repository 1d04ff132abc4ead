"""Helpers every source shares: where a species' images go and what a manifest row holds."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from snakeid.taxa import species_slug

# EXIF orientations that turn the stored image by 90 degrees (width and height swap on display).
_ROTATED = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


def species_dir(out_dir: Path, name: str) -> Path:
    """`<out>/images/<species_slug>`: where every source puts a species' photos."""
    return out_dir / "images" / species_slug(name)


def image_dims(path: Path) -> tuple[int, int] | None:
    """Displayed (width, height) read from the header, or None when it is not a readable image.

    Only the header is read: a truncated file can still report a size; `verify` decodes fully.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(_EXIF_ORIENTATION) in _ROTATED:
                width, height = height, width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None  # recorded as an empty size; `verify` decides what to do with the file
    return width, height
