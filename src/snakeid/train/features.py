"""The frozen-feature cache: the frozen prefix runs once per photo and view, the tail trains
on its memory-mapped output."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from snakeid.config import BaseConfig
from snakeid.data.dataset import DataConfig, SplitDataset, eval_transform, train_transform
from snakeid.data.manifest import read_manifest
from snakeid.data.split import observation_key
from snakeid.errors import UserError
from snakeid.model.engine import feature_engine, prefix_engine
from snakeid.model.models import SnakeNet, backbone_list
from snakeid.model.runtime import resolve_device, worker_seed
from snakeid.taxa import Species
from snakeid.train import distributed
from snakeid.utils import Progress, write_json

_logger = logging.getLogger(__name__)

FEATURES_META = "features.json"


class FeatureCache:
    """Frozen-prefix outputs: `views` augmented views × N images, float16, memory-mapped."""

    def __init__(self, directory: Path, name: str):
        self.path = directory / f"{name}.npy"
        self.array: np.ndarray | None = None
        self.seconds, self.images_per_s = 0.0, float("nan")

    @classmethod
    def open(cls, directory: Path, name: str) -> FeatureCache:
        cache = cls(directory, name)
        cache.array = np.load(cache.path, mmap_mode="r")
        return cache

    @torch.inference_mode()
    def mapped(self, module: nn.Module, directory: Path, name: str, device: str) -> FeatureCache:
        """A new cache holding `module` (frozen, eval mode) applied to every view of this one.

        Each rank maps its shard of the rows; `directory` must be one that all ranks see.
        """
        assert self.array is not None
        module.eval()
        out = FeatureCache(directory, name)
        views, n = self.array.shape[:2]
        probe = module(self.batch(np.zeros(1, dtype=int), np.zeros(1, dtype=int)).to(device))
        out._create((views, n, *probe.shape[1:]))
        mine = distributed.strided(n)
        for v in range(views):
            for i in range(0, len(mine), 256):
                idx = mine[i : i + 256]
                y = module(self.batch(np.full(len(idx), v), idx).to(device)).float().cpu().numpy()
                out.array[v, idx] = y.astype(np.float16)
        out._share()
        return out

    def _create(self, shape: tuple[int, ...]) -> None:
        """Rank 0 creates the float16 memmap; the other ranks then open it to write their rows."""
        if distributed.is_main():
            self.array = np.lib.format.open_memmap(
                self.path, mode="w+", dtype=np.float16, shape=shape
            )
            self.array.flush()
        distributed.barrier()
        if not distributed.is_main():
            self.array = np.lib.format.open_memmap(self.path, mode="r+")

    def _share(self) -> None:
        """Wait until every rank wrote its rows, then read the whole file."""
        assert self.array is not None
        self.array.flush()
        distributed.barrier()
        self.array = np.load(self.path, mmap_mode="r")

    def fill(
        self,
        prefix: Callable[[torch.Tensor], np.ndarray],
        datasets: Sequence[Dataset],
        *,
        batch_size: int,
        workers: int,
        seed: int,
        desc: str,
        mirror_view0: bool = False,
    ) -> None:
        """Run `prefix` (see `prefix_engine`) over this rank's shard of the photos, one view
        per entry of `datasets` (the same photos, each through its own transform).
        `mirror_view0`: view 0 holds the mean of the outputs for the photo and its mirror
        image, as the deployed model computes them with `model.tta_flip`.

        Each (view, photo) is augmented from its own seed, so the cache is the same whatever
        the number of ranks, DataLoader workers or the batch size.
        """
        views, n = len(datasets), len(datasets[0])
        mine = distributed.strided(n)
        x0 = _SeededViews(datasets[0], np.zeros(1, dtype=int), 0, seed)[0][0]
        shape = prefix(x0[None]).shape[1:]
        self._create((views, n, *shape))
        assert self.array is not None
        started = time.perf_counter()
        with Progress(views * len(mine), desc, "img", show=distributed.is_main()) as progress:
            for v, dataset in enumerate(datasets):
                loader = DataLoader(
                    _SeededViews(dataset, mine, v, seed),
                    batch_size=batch_size,
                    shuffle=False,
                    num_workers=workers,
                    worker_init_fn=worker_seed,
                )
                for x, _, idx in loader:
                    y = prefix(x)  # (B, ...)
                    if v == 0 and mirror_view0:
                        y = 0.5 * (y + prefix(torch.flip(x, dims=[3])))
                    y = y.astype(np.float16)
                    self.array[v, idx.numpy()] = y
                    progress.update(len(y))
        self._share()
        self.seconds = time.perf_counter() - started
        self.images_per_s = views * n / self.seconds if self.seconds else float("nan")
        _logger.info(
            "%s: %d × %d views in %.1fs (%.1f img/s over %d process(es))",
            desc,
            n,
            views,
            self.seconds,
            self.images_per_s,
            distributed.world_size(),
        )

    def batch(self, view: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        assert self.array is not None
        return torch.from_numpy(np.ascontiguousarray(self.array[view, idx])).float()

    @property
    def views(self) -> int:
        return 0 if self.array is None else self.array.shape[0]

    def __len__(self) -> int:
        return 0 if self.array is None else self.array.shape[1]


def cache_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="snakeid-features-")


@contextlib.contextmanager
def scratch_near(near: Path) -> Iterator[Path]:
    """A temporary directory for derived caches: the system's when single-process; beside
    `near` when distributed, because every rank writes its rows of the same files."""
    if distributed.world_size() == 1:
        with cache_dir() as tmp:
            yield Path(tmp)
        return
    made = tempfile.mkdtemp(prefix=".snakeid-scratch-", dir=near) if distributed.is_main() else ""
    path = Path(distributed.broadcast_object(made))
    try:
        yield path
    finally:
        distributed.barrier()  # nobody still reads it
        if distributed.is_main():
            shutil.rmtree(path, ignore_errors=True)


class _SeededViews(Dataset):
    """View `view` of the photos `indices` of `dataset`, each augmented from its own seed.

    The random transforms draw from torch's global generator; seeding it per (seed, view,
    photo) makes a photo's augmentation independent of which rank, DataLoader worker or batch
    position computes it. Items are (image, label, photo index).
    """

    def __init__(self, dataset: Dataset, indices: np.ndarray, view: int, seed: int):
        self.dataset, self.indices, self.view, self.seed = dataset, indices, view, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, int]:
        i = int(self.indices[k])
        item_seed = np.random.SeedSequence([self.seed, self.view, i]).generate_state(1)[0]
        with torch.random.fork_rng(devices=[]):  # leave the caller's generator as it was
            torch.manual_seed(int(item_seed))
            x, y = self.dataset[i]
        return x, y, i


@dataclass
class Caches:
    """Frozen features of the train and val photos, taken at `cut` (see `SnakeNet.prefix`), with
    their labels and observation groups. Each photo has `data.views` views: view 0 through the
    eval transform, the others augmented; validation reads view 0."""

    train: FeatureCache
    val: FeatureCache
    train_labels: np.ndarray
    val_labels: np.ndarray
    cut: int
    train_groups: list[str]
    val_groups: list[str]

    @property
    def root(self) -> Path:
        """Where scratch copies of the caches go (beside them: same file system)."""
        return self.train.path.parent.parent


def view_datasets(
    rows: Sequence[dict[str, str]], species: Sequence[Species], image_size: int, data: DataConfig
) -> list[SplitDataset]:
    """One dataset per cached view of `rows`: view 0 through the eval transform (what the model
    sees at test time), views 1.. through the training augmentation."""
    augment = train_transform(image_size, augment=data.augment, random_erasing=data.random_erasing)
    plain = SplitDataset(rows, species, eval_transform(image_size))
    return [plain, *(SplitDataset(rows, species, augment) for _ in range(data.views - 1))]


def _split_rows(split_dir: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    train, val = read_manifest(split_dir / "train.csv"), read_manifest(split_dir / "val.csv")
    if len(train) == 0 or len(val) == 0:
        raise UserError(f"{split_dir}: the train and val splits must both hold photos")
    return train, val


def _cache_key(
    base: BaseConfig,
    data: DataConfig,
    cut: int,
    device: str,
    tta_flip: bool,
    adapt: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "cut": cut,
        "tta_flip": tta_flip,
        # the trunks were fine-tuned first (`snakeid.train.adapt`) with these settings, or not
        "adapt": json.loads(json.dumps(adapt)) if adapt and adapt["backbones"] else None,
        "feature_engine": feature_engine(data.feature_engine, device),
        "backbone": list(backbone_list(base.backbone)),
        "image_size": base.image_size,
        "seed": base.seed,
        "views": data.views,
        "augment": data.augment,
        "random_erasing": data.random_erasing,
    }


def cache_features(
    model: SnakeNet,
    cut: int,
    out_dir: Path,
    *,
    split_dir: Path,
    species: Sequence[Species],
    base: BaseConfig,
    data: DataConfig,
    tta_flip: bool = False,
    adapt: dict[str, Any] | None = None,
) -> Caches:
    """Run the frozen `model.prefix(cut)` once over every train view and val photo; save to disk.

    `cut` is where the fine-tuning stage's trainable blocks begin, so both training stages train
    on these same features (the head stage passes them through the remaining frozen blocks);
    `cut == model.depth` caches the pooled features of every trunk.

    `tta_flip` (`model.tta_flip`): view 0, the one the val logits, the calibration and the
    unknown score are computed from, is the mean of the pooled features of the photo and its
    mirror image, what the deployed model computes.

    `adapt` (the `adapt` section, as a dict): the settings `model`'s trunks were adapted with
    before this call, recorded in the cache key.
    """
    _check_tta_flip(tta_flip, cut == model.depth)
    device = resolve_device(base.device)
    model.eval()
    size = model.input_size
    train_rows, val_rows = _split_rows(split_dir)
    train_views = view_datasets(train_rows, species, size, data)
    val_views = view_datasets(val_rows, species, size, data)
    train_ds, val_ds = train_views[0], val_views[0]
    _empty(out_dir)
    engine = feature_engine(data.feature_engine, device)
    where = "pooled" if cut == model.depth else f"features[:{cut}]"
    _logger.info("frozen %s of %s computed by %s", where, "+".join(model.backbones), engine)
    common = dict(
        batch_size=data.batch_size, workers=data.workers, seed=base.seed, mirror_view0=tta_flip
    )
    with prefix_engine(model.prefix(cut), engine, device, size) as prefix:
        train = FeatureCache(out_dir, "train")
        train.fill(prefix, train_views, desc="train features", **common)
        val = FeatureCache(out_dir, "val")
        val.fill(prefix, val_views, desc="val features", **common)
    meta = _cache_key(base, data, cut, device, tta_flip, adapt) | {
        "train_photo_ids": [r["photo_id"] for r in train_ds.rows],
        "val_photo_ids": [r["photo_id"] for r in val_ds.rows],
        "train_labels": train_ds.labels,
        "val_labels": val_ds.labels,
    }
    if distributed.is_main():
        write_json(out_dir / FEATURES_META, meta)
    return Caches(train, val, np.array(train_ds.labels), np.array(val_ds.labels), cut,
                  [observation_key(r) for r in train_rows],
                  [observation_key(r) for r in val_rows])  # fmt: skip


def _check_tta_flip(tta_flip: bool, pooled: bool) -> None:
    """The mirrored view's mean is taken on pooled features: a cache before them cannot."""
    if tta_flip and not pooled:
        raise UserError(
            "model.tta_flip averages the pooled features of a photo and its mirror image, but "
            "with finetune.enabled the features are cached before the trainable blocks, where "
            "that mean cannot be taken: set model.tta_flip: false or finetune.enabled: false"
        )


def _empty(out_dir: Path) -> None:
    """Rank 0 empties the cache directory (creating it); every rank waits for that."""
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("*"):
            old.unlink()
    distributed.barrier()


def pooled_views(model: SnakeNet, caches: Caches, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (V, N, D) float32 of every cached view of the train and the val photos
    (view 0 the eval transform), through `model`'s current weights from the cache's cut
    (collective under torchrun)."""
    middle = model.frozen_between(caches.cut, 0)
    if middle is None:  # the cache holds pooled features
        return tuple(np.asarray(c.array, np.float32) for c in (caches.train, caches.val))  # type: ignore[return-value]
    with scratch_near(caches.root) as tmp:
        mapped = [c.mapped(middle, tmp, f"pooled_{c.path.stem}", device)
                  for c in (caches.train, caches.val)]  # fmt: skip
        return tuple(np.array(c.array, np.float32) for c in mapped)  # type: ignore[return-value]


def load_caches(
    out_dir: Path,
    *,
    split_dir: Path,
    base: BaseConfig,
    data: DataConfig,
    cut: int,
    tta_flip: bool = False,
    adapt: dict[str, Any] | None = None,
) -> Caches:
    """Open features saved by `cache_features`; refuse them if they no longer fit."""
    path = out_dir / FEATURES_META
    if not path.exists():
        raise UserError(f"{path} not found: run the train_head stage first")
    meta = json.loads(path.read_text())
    want = _cache_key(base, data, cut, resolve_device(base.device), tta_flip, adapt)
    stale = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
    rows = dict(zip(("train", "val"), _split_rows(split_dir), strict=True))
    for split, split_rows in rows.items():
        if [r["photo_id"] for r in split_rows] != meta[f"{split}_photo_ids"]:
            stale[f"{split} photos"] = ("cached", "changed")
    if stale:
        raise UserError(
            f"features in {out_dir} were cached for other settings ({stale}); re-run train_head"
        )
    return Caches(
        FeatureCache.open(out_dir, "train"),
        FeatureCache.open(out_dir, "val"),
        np.array(meta["train_labels"]),
        np.array(meta["val_labels"]),
        cut,
        [observation_key(r) for r in rows["train"]],
        [observation_key(r) for r in rows["val"]],
    )
