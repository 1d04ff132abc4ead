"""The numpy preprocessing must reproduce torchvision's `eval_transform` pixel for pixel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms.v2.functional._geometry import (
    _center_crop_compute_crop_anchor,
    _compute_resized_output_size,
)

from snakeid.contract import PreprocessSpec, PreprocessSpecError
from snakeid.data.dataset import eval_preprocess_spec, eval_transform, load_rgb
from snakeid.model.preprocess import (
    CorruptImage,
    ImageTooLarge,
    NotAnImage,
    UnreadableImage,
    center_crop_box,
    load_image,
    preprocess,
    resized_size,
)
from tiny_model import demo_photo


def _package_file(package: str, relative: str) -> Path | None:
    """A photo shipped inside an installed package (found without importing the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / relative
    return path if path.is_file() else None


# Real photographs that the full install already carries (matplotlib, scikit-learn).
REAL_PHOTOS = {
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
}


def _synthetic(kind: str, path: Path) -> Path:
    if kind == "landscape":
        return demo_photo(path.with_suffix(".jpg"), (640, 480))
    if kind == "portrait_odd":
        return demo_photo(path.with_suffix(".jpg"), (257, 1001), seed=1)
    if kind == "smaller_than_crop":  # upsampled by the resize
        return demo_photo(path.with_suffix(".jpg"), (50, 41), seed=2)
    rgb = np.asarray(Image.open(demo_photo(path.with_suffix(".tmp.jpg"), (300, 200), seed=3)))
    if kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # camera held sideways: must be rotated before resizing
        Image.fromarray(rgb).save(path.with_suffix(".jpg"), exif=exif)
        return path.with_suffix(".jpg")
    if kind == "rgba_png":
        alpha = np.full(rgb.shape[:2] + (1,), 128, dtype=np.uint8)
        Image.fromarray(np.concatenate([rgb, alpha], axis=2)).save(path.with_suffix(".png"))
    elif kind == "grayscale_png":
        Image.fromarray(rgb).convert("L").save(path.with_suffix(".png"))
    elif kind == "palette_png":
        Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(
            path.with_suffix(".png")
        )
    elif kind == "cmyk_jpeg":
        Image.fromarray(rgb).convert("CMYK").save(path.with_suffix(".jpg"))
        return path.with_suffix(".jpg")
    return path.with_suffix(".png")


SYNTHETIC = [
    "landscape",
    "portrait_odd",
    "smaller_than_crop",
    "exif_rotated",
    "rgba_png",
    "grayscale_png",
    "palette_png",
    "cmyk_jpeg",
]


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("kind", [*REAL_PHOTOS, *SYNTHETIC])
def test_matches_torchvision_eval_transform(kind: str, size: int, tmp_path: Path) -> None:
    if kind in REAL_PHOTOS:
        path = _package_file(*REAL_PHOTOS[kind])
        if path is None:
            pytest.skip(f"{REAL_PHOTOS[kind][0]} sample photo not installed")
    else:
        path = _synthetic(kind, tmp_path / kind)
    expected = eval_transform(size)(load_rgb(path)).numpy()
    spec = PreprocessSpec.from_dict(eval_preprocess_spec(size))
    got = preprocess(load_image(path), spec)
    assert got.dtype == np.float32 and got.shape == expected.shape == (3, size, size)
    assert np.abs(got - expected).max() <= 1e-6


def test_resized_size_matches_torchvision() -> None:
    for shorter in (73, 256, 183):
        for h in range(1, 700, 13):
            for w in range(1, 700, 7):
                assert list(resized_size(w, h, shorter))[::-1] == _compute_resized_output_size(
                    (h, w), [shorter]
                ), (w, h, shorter)


def test_center_crop_box_matches_torchvision() -> None:
    for h in range(224, 300):
        for w in (224, 225, 256, 257, 300, 301):
            top, left = _center_crop_compute_crop_anchor(224, 224, h, w)
            assert center_crop_box(w, h, 224) == (left, top, left + 224, top + 224)


def test_spec_round_trips_the_exported_description() -> None:
    spec = PreprocessSpec.from_dict(eval_preprocess_spec(224))
    assert (spec.resize_shorter, spec.crop, spec.exif_transpose) == (256, 224, True)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"interpolation": "bicubic"}, "preprocess.interpolation"),
        ({"layout": "NHWC"}, "preprocess.layout"),
        ({"sharpen": True}, "unknown key 'sharpen'"),
        ({"mean": [0.5, 0.5]}, "preprocess.mean"),
        ({"std": [1.0, 0.0, 1.0]}, "preprocess.std"),
        ({"crop": "224"}, "preprocess.crop"),
        ({"resize_shorter": 200}, "preprocess.resize_shorter"),
    ],
)
def test_spec_rejects_what_it_cannot_replay(change: dict, message: str) -> None:
    with pytest.raises(PreprocessSpecError, match=message):
        PreprocessSpec.from_dict({**eval_preprocess_spec(224), **change})


def test_load_image_errors_say_what_is_wrong(tmp_path: Path) -> None:
    photo = demo_photo(tmp_path / "ok.jpg")
    with pytest.raises(NotAnImage, match="not a recognised image"):
        load_image(b"plain text, not pixels")
    with pytest.raises(NotAnImage, match="empty"):
        load_image(b"")
    with pytest.raises(CorruptImage, match="could not be decoded"):
        load_image(photo.read_bytes()[:2000])
    with pytest.raises(UnreadableImage, match="cannot read file"):
        load_image(tmp_path / "missing.jpg")
    big = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(big)
    with pytest.raises(ImageTooLarge, match="over the limit"):
        load_image(big, max_pixels=1_000_000)
    assert load_image(big, max_pixels=10_000_000).size == (3000, 3000)
