"""Image preprocessing and the split Dataset, defined once.

Training, evaluation, quantization calibration, the ONNX parity check and (through
`model_meta.json`) serving all use these transforms. Serving must not import torch, so the eval
policy is also described as plain data by `eval_preprocess_spec`, and `snakeid.model.preprocess`
implements that spec in numpy; a test checks the two agree pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from snakeid.config import spec
from snakeid.data.manifest import read_manifest
from snakeid.images import open_rgb
from snakeid.taxa import Species, label_index

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CROP_RATIO = 0.875  # eval: resize the shorter side to size / 0.875, then centre-crop `size`


@dataclass(frozen=True)
class DataConfig:
    batch_size: int = field(default=32, metadata=spec(ge=1))
    workers: int = field(default=0, metadata=spec(ge=0))
    sampler: str = field(default="none", metadata=spec(choices=("none", "balanced")))
    views: int = field(default=3, metadata=spec(ge=1, le=64))
    augment: str = field(default="basic", metadata=spec(choices=("basic", "trivialaugment")))
    random_erasing: float = field(default=0.0, metadata=spec(ge=0.0, le=1.0))  # probability
    # What runs the frozen prefix whose features are cached: onnxruntime (an FP32 ONNX export
    # of the prefix; on CPU several times cheaper than eager PyTorch, bench/results.md) or
    # torch. auto = onnxruntime on the CPU, torch on a GPU.
    feature_engine: str = field(
        default="auto", metadata=spec(choices=("auto", "onnxruntime", "torch"))
    )


def eval_resize(size: int) -> int:
    return round(size / CROP_RATIO)


def eval_preprocess_spec(size: int) -> dict[str, Any]:
    """The eval transform as data, for `model_meta.json` (serving reads only this)."""
    return {
        "exif_transpose": True,
        "color": "RGB",
        "resize_shorter": eval_resize(size),
        "interpolation": "bilinear",
        "antialias": True,
        "crop": size,
        "crop_policy": "center",
        "scale": 1 / 255,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "layout": "NCHW",
    }


def _to_tensor() -> list[T.Transform]:
    return [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transform(size: int, *, augment: str = "basic", random_erasing: float = 0.0) -> T.Compose:
    """Augmentation for training views: random crop/scale, flip, then either mild colour jitter
    (`basic`) or TrivialAugmentWide, optionally followed by random erasing."""
    policy = (
        T.TrivialAugmentWide()
        if augment == "trivialaugment"
        else T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)
    )
    erase = [T.RandomErasing(p=random_erasing, value=0)] if random_erasing > 0 else []
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            policy,
            *_to_tensor(),
            *erase,
        ]
    )


def eval_transform(size: int) -> T.Compose:
    """Deterministic eval preprocessing: resize shorter side, centre crop, normalise."""
    return T.Compose(
        [
            T.Resize(eval_resize(size), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(size),
            *_to_tensor(),
        ]
    )


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image the way every consumer does: EXIF orientation applied, RGB."""
    with Image.open(path) as im:
        return open_rgb(im)


class SplitDataset(Dataset):
    """Photos of one split manifest (`data/split/<split>.csv`), labelled by species order (or
    -1 with `species` None: photos of species the model does not know)."""

    def __init__(
        self, rows: Sequence[dict[str, str]], species: Sequence[Species] | None, transform: Any
    ):
        index = label_index(species or [])
        unknown = sorted({r["taxon"] for r in rows} - set(index))
        if unknown and species is not None:
            raise ValueError(f"manifest has species not in the species file: {', '.join(unknown)}")
        self.rows = list(rows)
        self.paths = [r["path"] for r in self.rows]
        self.labels = [index.get(r["taxon"], -1) for r in self.rows]
        self.transform = transform

    @classmethod
    def from_csv(cls, path: str | Path, species: Sequence[Species], transform: Any) -> SplitDataset:
        return cls(read_manifest(path), species, transform)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[i])), self.labels[i]


def eval_batches(
    rows: Sequence[dict[str, str]],
    species: Sequence[Species] | None,
    image_size: int,
    batch_size: int = 32,
) -> list[np.ndarray]:
    """The shared eval transform applied to `rows`, as float32 NCHW numpy batches (`species`
    None: photos of species the model does not know)."""
    ds = SplitDataset(rows, species, eval_transform(image_size))
    out, batch = [], []
    for i in range(len(ds)):
        batch.append(ds[i][0].numpy())
        if len(batch) == batch_size or i == len(ds) - 1:
            out.append(np.stack(batch))
            batch = []
    return out
