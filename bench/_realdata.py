"""Real photos for the benchmarks that measure recipes on them (cv.py, openset.py): the folder
source and `verify` once, then the pipeline's own feature pass, both cached in a work dir."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from torch import nn

from snakeid import verify
from snakeid.config import section
from snakeid.data import DataConfig
from snakeid.engine import prefix_engine
from snakeid.manifest import read_manifest
from snakeid.sources import DownloadConfig, run_download
from snakeid.taxa import Species
from snakeid.train import FeatureCache, view_datasets

ENSEMBLE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


# ---------------------------------------------------------------------------------------------
# Data: folder source + verify once


def pooled_folder(data: Path, pool: Path) -> Path:
    """`<data>/{train,val,test}/<Species>/f` → `<pool>/<Species>/<split>__f` (symlinks), so that
    cross-validation sees every photo. A flat folder is used as it is."""
    splits = [
        d for d in sorted(data.iterdir()) if d.is_dir() and d.name in ("train", "val", "test")
    ]
    if not splits:
        return data
    if pool.exists():
        return pool
    tmp = pool.with_name(pool.name + ".part")
    for split_dir in splits:
        for sp in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            (tmp / sp.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(sp.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    (tmp / sp.name / f"{split_dir.name}__{f.name}").symlink_to(f.resolve())
    tmp.rename(pool)
    return pool


def clean_rows(data: Path, work: Path, species: list[Species], params: dict) -> list[dict]:
    """Folder source + verify (cached in `work`); the clean manifest rows."""
    clean = work / "clean"
    if not (clean / "manifest.csv").exists():
        run_download(
            DownloadConfig(source="folder", folder=str(pooled_folder(data, work / "pool"))),
            species,
            work / "raw",
            seed=0,
        )
        verify.run(work / "raw", clean, species, section(params, "verify", verify.VerifyConfig))
    return read_manifest(clean / "manifest.csv")


# ---------------------------------------------------------------------------------------------
# Features: the pipeline's own feature pass, once per module


def features(
    module: nn.Module,
    rows: list[dict],
    species: list[Species],
    data: DataConfig,
    *,
    size: int,
    seed: int,
    path: Path,
) -> tuple[np.ndarray, float]:
    """(V, N, ...) float16 outputs of `module` (`SnakeNet.prefix(cut)`, or one trunk: its pooled
    features) over every view of `rows`, each view augmented from the same seeds whatever the
    module, and the seconds taken (0 when read back from `path`)."""
    if path.exists():
        return np.load(path, mmap_mode="r"), 0.0
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(path.parent, path.stem + ".part")
    with prefix_engine(module, "onnxruntime", "cpu", size) as prefix:
        cache.fill(
            prefix,
            view_datasets(rows, species, size, data),
            batch_size=data.batch_size,
            workers=data.workers,
            seed=seed,
            desc=path.stem,
        )
    cache.path.rename(path)
    return np.load(path, mmap_mode="r"), time.perf_counter() - started
