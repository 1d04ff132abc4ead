"""Tiny labelled image sets for training/evaluation tests, built in a temp dir."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from snakeid.data.manifest import CLEAN_COLUMNS
from snakeid.taxa import Species

SPECIES = [
    Species("Naja kaouthia", "Monocled Cobra", True),
    Species("Ptyas mucosa", "Oriental Rat Snake", False),
    Species("Bungarus fasciatus", "Banded Krait", True),
]
_COLOURS = [(120, 80, 40), (90, 140, 40), (230, 200, 30)]


def write_species(path: Path, species: list[Species] = SPECIES) -> Path:
    lines = [
        f"- name: {s.name}\n  common: {s.common}\n  venomous: {str(s.venomous).lower()}\n"
        for s in species
    ]
    path.write_text("".join(lines))
    return path


def make_split(
    root: Path, per_split: dict[str, int] | None = None, size: int = 72, seed: int = 0
) -> Path:
    """`root/split/{train,val,test}.csv` over images of coloured blobs, one colour per species."""
    per_split = per_split or {"train": 8, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    images = root / "clean" / "images"
    images.mkdir(parents=True, exist_ok=True)
    split_dir = root / "split"
    split_dir.mkdir(parents=True, exist_ok=True)
    k = 0
    for split, n in per_split.items():
        rows = []
        for si, sp in enumerate(SPECIES):
            for _ in range(n):
                im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
                draw = ImageDraw.Draw(im)
                for _ in range(4):
                    x, y = rng.integers(0, size - 20, 2)
                    draw.ellipse([x, y, x + 24, y + 14], fill=_COLOURS[si])
                path = images / f"{k:04d}.jpg"
                im.save(path, quality=95)
                rows.append(
                    {
                        "photo_id": str(k),
                        "observation_id": f"obs{k}",
                        "taxon": sp.name,
                        "path": str(path),
                        "source": "test",
                        "split": split,
                    }
                )
                k += 1
        with open(split_dir / f"{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(CLEAN_COLUMNS), restval="")
            w.writeheader()
            w.writerows(rows)
    return split_dir
