"""Real photos for the benchmarks that measure recipes on them (cv.py, openset.py): the folder
source and `verify` once, then the pipeline's own feature pass, both cached in a work dir."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from torch import nn

from snakeid.config import section, to_dict
from snakeid.data import verify
from snakeid.data.dataset import DataConfig
from snakeid.data.manifest import read_manifest
from snakeid.data.sources import DownloadConfig, run_download
from snakeid.model.engine import prefix_engine
from snakeid.model.models import ModelConfig, build_model
from snakeid.taxa import Species
from snakeid.train.adapt import adapt_trunks
from snakeid.train.config import AdaptConfig
from snakeid.train.features import FeatureCache, view_datasets

ENSEMBLE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Adapted trunks (`adapt.backbones`), measured as the pipeline runs them: train_head adapts on
# its train photos and calibrates on its val photos alone. In a benchmark's outer fold, this
# inner grouped fold of the training photos plays val: the trunk never trains on it, and only
# its out-of-fold values calibrate (1 of 5 folds: 17 % of the training photos, as val is
# 15 / 85 of the pipeline's train + val)
CALIBRATION_FOLD = 0
# The venomous rule as a Bayes decision (`finetune.venomous_cost_ratio`): "possibly venomous" at
# calibrated P(venomous) >= 1 / (1 + k); the ratios cv.py and openset.py measure
COST_RATIOS = (19, 32, 49, 99)
# The rule it replaced, measured beside it: the threshold that misses at most this share of the
# calibration photos' venomous ones (0: the hardest one sets it)
MISS_TARGET_BASELINE = 0.0


def miss_target_threshold(
    p_venomous: np.ndarray, is_venomous: np.ndarray, miss_target: float, cap: float = 0.5
) -> float:
    """Largest threshold t ≤ `cap` with at most `miss_target` of the venomous photos below t
    (the pipeline's venomous rule before `venomous_cost_ratio`)."""
    pv = np.sort(p_venomous[np.asarray(is_venomous, dtype=bool)])
    if len(pv) == 0:
        return cap
    allowed = int(np.floor(miss_target * len(pv)))  # venomous photos the rule may miss
    return float(min(cap, pv[allowed] if allowed < len(pv) else cap))


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


def adapted(
    x: np.ndarray,
    rows: list[dict],
    species: list[Species],
    classes: Sequence[Species],
    train: np.ndarray,
    adapt: AdaptConfig,
    data: DataConfig,
    *,
    seed: int,
    work: Path,
) -> np.ndarray:
    """A copy of `x` ((V, N, D): the ENSEMBLE's pooled features of `rows`, each of `species`)
    with the columns of each trunk in `adapt.backbones` replaced by its pooled features after
    `train_head` would adapt it (`snakeid.train.adapt`) on the photos `train` (labelled among
    `classes`): every photo, every view, augmented from the same seeds as the frozen columns.
    Cached in `work` by what they depend on."""
    trained_on = [rows[i]["photo_id"] for i in train]
    key = json.dumps([to_dict(adapt), trained_on, data.views, seed, len(rows)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    model = build_model(ENSEMBLE, len(classes), ModelConfig())
    paths = {name: work / f"{digest}-{name}.npy" for name in adapt.backbones}
    if not all(p.exists() for p in paths.values()):
        with threadpool_limits(os.cpu_count()):  # torch's threads too, if a caller limits them
            adapt_trunks(model, [rows[i] for i in train], classes, adapt, data=data, seed=seed,
                         device="cpu")  # fmt: skip
    out = np.array(x)  # a copy: the frozen features stay as they are
    start = np.cumsum([0, *(t.dim for t in model.trunks)])
    for name, path in paths.items():
        k = model.backbones.index(name)
        out[:, :, start[k] : start[k + 1]] = features(
            model.trunks[k], rows, species, data, size=model.input_size, seed=seed, path=path
        )[0]
    return out
