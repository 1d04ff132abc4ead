"""Two-stage transfer learning on cached frozen features.

Both stages train only the tail of the network: `train_head` the classifier on a frozen backbone,
`finetune` the last `unfreeze_blocks` feature blocks plus the classifier. Everything below the
trainable tail is frozen, so its output for a given image and augmentation is fixed: we compute
it once per image and augmentation view (`data.views` views, float16, memory-mapped in a temp
dir) and train the tail on those features. That removes the backbone forward from every epoch
(the original study's loop) and makes "frozen means frozen" structural: the frozen prefix runs
only in eval mode under `torch.inference_mode`, so neither its weights nor its BatchNorm
running statistics can move.

Under `torchrun` (see `snakeid.distributed`) the same code runs as N data-parallel ranks: each
rank computes the cached features of its shard of the photos into one shared memmap, trains the
tail wrapped in `DistributedDataParallel` on its shard of every epoch's seeded sample order
(`data.batch_size` stays the global batch: each rank takes batch_size / N), and validates its
shard of the val photos; the logits are gathered so every rank computes the same metrics and
keeps the same best epoch. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from snakeid import distributed
from snakeid.config import BaseConfig, base_config, section, spec, to_dict
from snakeid.data import DataConfig, SplitDataset, eval_transform, train_transform
from snakeid.engine import feature_engine, prefix_engine
from snakeid.live import EpochLog
from snakeid.manifest import read_manifest
from snakeid.metrics import balanced_accuracy, macro_f1
from snakeid.models import SnakeNet, backbone_list
from snakeid.probe import fit_probe, out_of_fold_logits, stack_views
from snakeid.split import observation_key
from snakeid.stage import UserError
from snakeid.taxa import Species, load_species
from snakeid.utils import resolve_device, seed_everything, worker_seed, write_json

_logger = logging.getLogger(__name__)

METRICS = ("macro_f1", "accuracy", "balanced_accuracy")
PROGRESS_EVERY_S = 20  # a log line this often in long loops when stdout is not a terminal


@dataclass(frozen=True)
class LossConfig:
    class_weighting: str = field(
        default="none",
        metadata=spec(choices=("none", "inverse", "sqrt_inverse", "effective_number")),
    )
    beta: float = field(default=0.999, metadata=spec(gt=0.0, lt=1.0))  # effective_number only
    label_smoothing: float = field(default=0.0, metadata=spec(ge=0.0, lt=1.0))
    # Logit adjustment (Menon et al., 2021): train on logits + tau·log(prior), predict with
    # plain logits. 0 = off.
    logit_adjustment: float = field(default=0.0, metadata=spec(ge=0.0))
    force: bool = False  # allow stacking two imbalance corrections


SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainHeadConfig:
    # probe: L2-regularised logistic regression on standardised pooled features (snakeid.probe),
    # solved to convergence; sgd: AdamW over `epochs`, best epoch on val.
    method: str = field(default="probe", metadata=spec(choices=("probe", "sgd")))
    probe_c: float = field(default=0.1, metadata=spec(gt=0.0))  # inverse L2 strength
    # probe: fit the final head on train+val; temperature and venomous threshold then come from
    # out-of-fold logits (grouped k-fold over train+val), never from photos the head saw.
    refit: bool = True
    refit_folds: int = field(default=5, metadata=spec(ge=2))
    epochs: int = field(default=10, metadata=spec(ge=1))
    lr: float = field(default=1e-3, metadata=spec(gt=0.0))
    weight_decay: float = field(default=0.01, metadata=spec(ge=0.0))
    select_metric: str = field(default="macro_f1", metadata=spec(choices=METRICS))
    schedule: str = field(default="constant", metadata=spec(choices=SCHEDULES))
    warmup_epochs: int = field(default=0, metadata=spec(ge=0))
    ema_decay: float = field(default=0.0, metadata=spec(ge=0.0, lt=1.0))  # 0 = no EMA


@dataclass(frozen=True)
class FinetuneConfig:
    # false: the head is the final model (finetune only calibrates it); on real photos training
    # blocks did not beat the linear probe (bench/cv.md)
    enabled: bool = False
    epochs: int | None = field(default=None, metadata=spec(ge=1))  # None: max(2, head epochs // 2)
    unfreeze_blocks: int = field(default=1, metadata=spec(ge=0))
    lr_scale: float = field(default=0.5, metadata=spec(gt=0.0))
    # Discriminative learning rates: block k below the classifier trains at lr · decay^k.
    layer_lr_decay: float = field(default=1.0, metadata=spec(gt=0.0, le=1.0))
    weight_decay: float = field(default=0.01, metadata=spec(ge=0.0))
    select_metric: str = field(default="macro_f1", metadata=spec(choices=METRICS))
    schedule: str = field(default="constant", metadata=spec(choices=SCHEDULES))
    warmup_epochs: int = field(default=0, metadata=spec(ge=0))
    ema_decay: float = field(default=0.0, metadata=spec(ge=0.0, lt=1.0))
    # Post-hoc calibration on the val split, carried by the checkpoint into the exported model.
    temperature_scaling: bool = True
    # "Possibly venomous" when P(any venomous species) ≥ a threshold chosen on val so that at
    # most this share of venomous val photos fall below it (capped at 0.5).
    venomous_miss_target: float = field(default=0.02, metadata=spec(ge=0.0, le=1.0))


@dataclass(frozen=True)
class FitSpec:
    """What one training run does, independent of which stage asked for it."""

    epochs: int
    lr: float
    weight_decay: float
    select_metric: str
    batch_size: int
    sampler: str
    loss: LossConfig
    seed: int
    schedule: str = "constant"
    warmup_epochs: int = 0
    ema_decay: float = 0.0
    layer_lr_decay: float = 1.0


def check_imbalance_options(data: DataConfig, loss: LossConfig) -> None:
    """Refuse stacking imbalance corrections: each alone already rebalances the classes."""
    on = [
        name
        for name, active in (
            ("data.sampler: balanced", data.sampler == "balanced"),
            (f"loss.class_weighting: {loss.class_weighting}", loss.class_weighting != "none"),
            (f"loss.logit_adjustment: {loss.logit_adjustment}", loss.logit_adjustment > 0),
        )
        if active
    ]
    if len(on) > 1 and not loss.force:
        raise UserError(
            f"{' together with '.join(on)} over-corrects the imbalance; pick one "
            "(or set loss.force: true)"
        )


def class_weights(counts: np.ndarray, cfg: LossConfig) -> torch.Tensor | None:
    """Per-class loss weights, normalised to mean 1 over classes present in training."""
    if cfg.class_weighting == "none":
        return None
    n = np.maximum(counts.astype(np.float64), 1.0)
    if cfg.class_weighting == "inverse":
        w = 1.0 / n
    elif cfg.class_weighting == "sqrt_inverse":
        w = 1.0 / np.sqrt(n)
    else:  # effective number of samples (Cui et al., 2019)
        w = (1.0 - cfg.beta) / (1.0 - np.power(cfg.beta, n))
    present = counts > 0
    w = np.where(present, w, 0.0)
    w = w / w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Feature cache


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
    ) -> None:
        """Run `prefix` (see `prefix_engine`) over this rank's shard of the photos, one view
        per entry of `datasets` (the same photos, each through its own transform).

        Each (view, photo) is augmented from its own seed, so the cache is the same whatever
        the number of ranks, DataLoader workers or the batch size.
        """
        views, n = len(datasets), len(datasets[0])
        mine = distributed.strided(n)
        x0 = _SeededViews(datasets[0], np.zeros(1, dtype=int), 0, seed)[0][0]
        shape = prefix(x0[None]).shape[1:]
        self._create((views, n, *shape))
        assert self.array is not None
        started = said = time.perf_counter()
        done, total = 0, views * len(mine)
        with tqdm(
            total=total,
            desc=desc,
            unit="img",
            leave=False,
            mininterval=2,
            disable=None if distributed.is_main() else True,  # None: no bar when not a terminal
        ) as bar:
            for v, dataset in enumerate(datasets):
                loader = DataLoader(
                    _SeededViews(dataset, mine, v, seed),
                    batch_size=batch_size,
                    shuffle=False,
                    num_workers=workers,
                    worker_init_fn=worker_seed,
                )
                for x, _, idx in loader:
                    y = prefix(x).astype(np.float16)  # (B, ...)
                    self.array[v, idx.numpy()] = y
                    done += len(y)  # (a disabled bar counts nothing)
                    rate = done / (time.perf_counter() - started)
                    bar.update(len(y))
                    bar.set_postfix(img_s=f"{rate:.1f}")
                    logged = bar.disable and distributed.is_main()  # not a terminal: log lines
                    if logged and time.perf_counter() - said >= PROGRESS_EVERY_S:
                        said = time.perf_counter()
                        _logger.info("%s: %d/%d (%.1f img/s)", desc, done, total, rate)
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
def _scratch(near: Path) -> Iterator[Path]:
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


# ---------------------------------------------------------------------------------------------
# Training the tail


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best: dict[str, float]
    state_dict: dict[str, torch.Tensor]
    val_logits: np.ndarray  # (N_val, C) of the best epoch's weights


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) of `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


class _Ema:
    """Exponential moving average of a module's floating-point state (weights and BN stats)."""

    def __init__(self, module: nn.Module, decay: float):
        self.module, self.decay, self.updates = module, decay, 0
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        # Warm-up as in timm/TF: early averages are not dominated by the initial weights.
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.state[k].copy_(v)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the module."""
        live = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.module.load_state_dict(self.state)
        try:
            yield
        finally:
            self.module.load_state_dict(live)


def fit_tail(
    model: SnakeNet,
    tail: nn.Module,
    param_groups: list[dict[str, Any]],
    train: FeatureCache,
    train_labels: np.ndarray,
    val: FeatureCache,
    val_labels: np.ndarray,
    labels: Sequence[int],
    spec_: FitSpec,
    *,
    device: str,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train `tail` (the modules owning `param_groups`) on cached features; keep the best epoch.

    Each epoch visits every training image once, in a seeded order, through one of its cached
    augmentation views chosen at random. Validation (and the kept weights) use the EMA of the
    weights when `ema_decay` > 0.

    Distributed: all ranks draw the same order and take their shard of it (`distributed.shard`)
    in batches of `batch_size / world` (rounded up), so a step of all ranks together is one
    global batch of `batch_size`; `DistributedDataParallel` averages the gradients.
    """
    n_classes = model.classifier.out_features
    rng = np.random.default_rng(spec_.seed)
    counts = np.bincount(train_labels, minlength=n_classes)
    weights = class_weights(counts, spec_.loss)
    criterion = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device),
        label_smoothing=spec_.loss.label_smoothing,
    )
    # Logit adjustment: the loss sees logits + tau·log(prior); the model learns to beat the prior.
    prior = np.maximum(counts, 1) / counts.sum()
    adjust = torch.tensor(spec_.loss.logit_adjustment * np.log(prior), dtype=torch.float32).to(
        device
    )
    optimizer = torch.optim.AdamW(param_groups, lr=spec_.lr, weight_decay=spec_.weight_decay)
    n, world = len(train), distributed.world_size()
    positions = distributed.shard(np.arange(n))  # this rank's places in each epoch's order
    batch = -(-spec_.batch_size // world)  # per rank
    steps_per_epoch = math.ceil(len(positions) / batch)
    total_steps = steps_per_epoch * spec_.epochs
    warmup = min(spec_.warmup_epochs * steps_per_epoch, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, spec_.schedule)
    )
    ema = _Ema(tail, spec_.ema_decay) if spec_.ema_decay > 0 else None
    net = tail
    if world > 1:
        # Buffers (BatchNorm statistics) are averaged after each step, not rank 0's broadcast.
        ids = [torch.cuda.current_device()] if device.startswith("cuda") else None
        net = DistributedDataParallel(tail, device_ids=ids, forward_sync_buffers=False)
        # Same weights (DDP copies rank 0's at the start), but independent dropout masks.
        torch.manual_seed(
            int(np.random.SeedSequence([spec_.seed, distributed.rank()]).generate_state(1)[0])
        )
    stats = [b for b in tail.buffers() if b.dtype.is_floating_point]
    if spec_.sampler == "balanced":
        # each image drawn with probability ∝ 1 / its class count: classes equally likely
        p = 1.0 / counts[train_labels]
        p = p / p.sum()
    history, best, best_epoch, best_state, best_logits = [], -math.inf, 0, None, None
    y_all = torch.from_numpy(train_labels).long()
    for epoch in range(1, spec_.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        tail.train()
        order = rng.choice(n, n, p=p) if spec_.sampler == "balanced" else rng.permutation(n)
        view = rng.integers(0, train.views, n)
        total_loss, correct, seen = 0.0, 0, 0
        for i in range(0, len(positions), batch):
            at = positions[i : i + batch]
            idx = order[at]
            x = train.batch(view[at], idx).to(device)
            y = y_all[idx].to(device)
            logits = net(x)
            loss = criterion(logits + adjust, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if stats and world > 1:
                distributed.average_buffers(tail)
            if ema:
                ema.update()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(idx)
        total_loss, correct, seen = distributed.all_sum(np.array([total_loss, correct, seen]))
        seconds = time.perf_counter() - started
        with ema.applied() if ema else contextlib.nullcontext():
            val_loss, val_logits = predict_cached(tail, val, device=device, labels=val_labels)
            val_pred = val_logits.argmax(1)
            row = {
                "epoch": epoch,
                "train_loss": float(total_loss / seen),
                "train_accuracy": float(correct / seen),
                "val_loss": val_loss,
                "val_accuracy": float((val_pred == val_labels).mean()),
                "val_macro_f1": macro_f1(val_labels, val_pred, labels),
                "val_balanced_accuracy": balanced_accuracy(val_labels, val_pred, labels),
                "lr": lr,
                "seconds": seconds,
                "images_per_s": n / seconds,
            }
            score = row[f"val_{spec_.select_metric}"]
            if score > best:  # strict: ties keep the earlier (cheaper, less fitted) epoch
                best, best_epoch, best_logits = score, epoch, val_logits
                best_state = copy.deepcopy(model.state_dict())
        history.append(row)
        if on_epoch:
            on_epoch(row)
    assert best_state is not None and best_logits is not None
    return FitResult(history, best_epoch, history[best_epoch - 1], best_state, best_logits)


@torch.no_grad()
def predict_cached(
    tail: nn.Module, cache: FeatureCache, *, device: str, labels: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy (if labels given) and logits (N, C) over view 0 of a cache.

    Distributed, each rank predicts its shard and every rank gets all N rows back, in order.
    """
    tail.eval()
    out, loss_sum = [], 0.0
    n = len(cache)
    mine = distributed.strided(n)
    for i in range(0, len(mine), 256):
        idx = mine[i : i + 256]
        logits = tail(cache.batch(np.zeros(len(idx), dtype=int), idx).to(device)).float()
        if labels is not None:
            y = torch.from_numpy(labels[idx]).long().to(device)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        out.append(logits.cpu().numpy())
    if not out:  # more ranks than rows: an empty shard, but of the right shape for the gather
        first = cache.batch(np.zeros(1, dtype=int), np.zeros(1, dtype=int)).to(device)
        out.append(tail(first).float().cpu().numpy()[:0])
    local = np.concatenate(out)
    loss_sum = float(distributed.all_sum(np.array([loss_sum]))[0])
    return loss_sum / max(n, 1), distributed.gather_strided(local)


def freeze_all_but(model: SnakeNet, trainable: Sequence[nn.Parameter]) -> None:
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


# ---------------------------------------------------------------------------------------------
# The two stages


@dataclass
class StageResult:
    model: SnakeNet
    fit: FitResult
    metrics: dict[str, Any]
    val_labels: np.ndarray


FEATURES_META = "features.json"


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


def _cache_key(base: BaseConfig, data: DataConfig, cut: int, device: str) -> dict[str, Any]:
    return {
        "cut": cut,
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
) -> Caches:
    """Run the frozen `model.prefix(cut)` once over every train view and val photo; save to disk.

    `cut` is where the fine-tuning stage's trainable blocks begin, so both training stages train
    on these same features (the head stage passes them through the remaining frozen blocks);
    `cut == model.depth` caches the pooled features of every trunk.
    """
    device = resolve_device(base.device)
    model.eval()
    size = model.input_size
    train_rows, val_rows = _split_rows(split_dir)
    train_views = view_datasets(train_rows, species, size, data)
    val_views = view_datasets(val_rows, species, size, data)
    train_ds, val_ds = train_views[0], val_views[0]
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("*"):
            old.unlink()
    distributed.barrier()
    engine = feature_engine(data.feature_engine, device)
    where = "pooled" if cut == model.depth else f"features[:{cut}]"
    _logger.info("frozen %s of %s computed by %s", where, "+".join(model.backbones), engine)
    common = dict(batch_size=data.batch_size, workers=data.workers, seed=base.seed)
    with prefix_engine(model.prefix(cut), engine, device, size) as prefix:
        train = FeatureCache(out_dir, "train")
        train.fill(prefix, train_views, desc="train features", **common)
        val = FeatureCache(out_dir, "val")
        val.fill(prefix, val_views, desc="val features", **common)
    meta = _cache_key(base, data, cut, device) | {
        "train_photo_ids": [r["photo_id"] for r in train_ds.rows],
        "val_photo_ids": [r["photo_id"] for r in val_ds.rows],
        "train_labels": train_ds.labels,
        "val_labels": val_ds.labels,
    }
    if distributed.is_main():
        write_json(out_dir / FEATURES_META, meta)
    return Caches(
        train,
        val,
        np.array(train_ds.labels),
        np.array(val_ds.labels),
        cut,
        [observation_key(r) for r in train_rows],
        [observation_key(r) for r in val_rows],
    )


def load_caches(
    out_dir: Path, *, split_dir: Path, base: BaseConfig, data: DataConfig, cut: int
) -> Caches:
    """Open features saved by `cache_features`; refuse them if they no longer fit."""
    path = out_dir / FEATURES_META
    if not path.exists():
        raise UserError(f"{path} not found: run the train_head stage first")
    meta = json.loads(path.read_text())
    want = _cache_key(base, data, cut, resolve_device(base.device))
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


def train_tail(
    model: SnakeNet,
    unfreeze_blocks: int,
    caches: Caches,
    *,
    base: BaseConfig,
    data: DataConfig,
    fit: FitSpec,
    stage: str,
    log: EpochLog | None = None,
) -> StageResult:
    """Train the last `unfreeze_blocks` blocks and the classifier on cached features.

    Frozen blocks between the cache and the trainable tail run once over the cache, not once
    per epoch. Each epoch goes to `log` (DVCLive) as it ends. Returns the model with its best
    epoch's weights.
    """
    check_imbalance_options(data, fit.loss)
    device = resolve_device(base.device)
    model.to(device)
    middle = model.frozen_between(caches.cut, unfreeze_blocks)
    _, tail = model.split(unfreeze_blocks)
    params = model.trainable_parameters(unfreeze_blocks)
    freeze_all_but(model, params)
    groups = model.param_groups(unfreeze_blocks, fit.lr, fit.layer_lr_decay)
    train_y, val_y = caches.train_labels, caches.val_labels
    labels = np.unique(val_y)
    bar = tqdm(
        total=fit.epochs,
        desc=f"{stage}: epochs",
        unit="epoch",
        disable=None if distributed.is_main() else True,
    )

    def progress(row: dict[str, float]) -> None:
        if log is not None:
            log.epoch(row)
        bar.update(1)
        bar.set_postfix(
            loss=f"{row['train_loss']:.3f}",
            val_f1=f"{row['val_macro_f1']:.3f}",
            img_s=f"{row['images_per_s']:.0f}",
        )
        if bar.disable and distributed.is_main():  # not a terminal (CI, a log file): a line each
            _logger.info(
                "%s: epoch %d/%d loss %.3f val macro-F1 %.3f %.0f img/s",
                stage, row["epoch"], fit.epochs, row["train_loss"], row["val_macro_f1"],
                row["images_per_s"],
            )  # fmt: skip

    with _scratch(caches.train.path.parent.parent) as tmp:
        train, val = caches.train, caches.val
        if middle is not None:
            train = train.mapped(middle, tmp, "train", device)
            val = val.mapped(middle, tmp, "val", device)
        result = fit_tail(
            model, tail, groups, train, train_y, val, val_y, labels, fit,
            device=device, on_epoch=progress,
        )  # fmt: skip
    bar.close()
    model.load_state_dict(result.state_dict)
    model.to("cpu").eval()
    _logger.info(
        "%s: best epoch %d, val %s %.4f, %.1fs training",
        stage,
        result.best_epoch,
        fit.select_metric,
        result.best[f"val_{fit.select_metric}"],
        sum(r["seconds"] for r in result.history),
    )
    # No timings in the metrics: `dvc repro --force` twice must give identical metrics files.
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs": fit.epochs,
        "select_metric": fit.select_metric,
        "val_accuracy": result.best["val_accuracy"],
        "val_macro_f1": result.best["val_macro_f1"],
        "val_balanced_accuracy": result.best["val_balanced_accuracy"],
        "val_loss": result.best["val_loss"],
        "train_loss": result.best["train_loss"],
        "n_train": len(train_y),
        "n_val": len(val_y),
        "views": caches.train.views,
        "feature_engine": feature_engine(data.feature_engine, device),
        "unfreeze_blocks": unfreeze_blocks,
        "trainable_parameters": sum(p.numel() for p in params),
        "backbone": "+".join(model.backbones),
        "image_size": model.input_size,
        "device": device,
        "processes": distributed.world_size(),
        "batch_size": fit.batch_size,  # global: each process takes batch_size / processes
    }
    return StageResult(model, result, metrics, val_y)


@dataclass
class Holdout:
    """Logits of photos the model did not train on, for calibration: the val photos, or with a
    refit, every train+val photo predicted by a probe fitted without its observation's fold."""

    logits: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)
    source: str  # "val" | "out-of-fold train+val"


def probe_balance(data: DataConfig, loss: LossConfig) -> bool:
    """The probe's one imbalance correction: `loss.class_weighting: inverse` ("balanced")."""
    unsupported = [
        name
        for name, on in (
            ("data.sampler: balanced", data.sampler != "none"),
            ("loss.logit_adjustment", loss.logit_adjustment > 0),
            ("loss.label_smoothing", loss.label_smoothing > 0),
            (
                f"loss.class_weighting: {loss.class_weighting}",
                loss.class_weighting not in ("none", "inverse"),
            ),
        )
        if on
    ]
    if unsupported:
        raise UserError(
            f"train_head.method: probe does not use {', '.join(unsupported)} (it supports "
            "loss.class_weighting: none | inverse); use train_head.method: sgd for them"
        )
    return loss.class_weighting == "inverse"


def _log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    return float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item())


def train_probe(
    model: SnakeNet, caches: Caches, cfg: TrainHeadConfig, *, balanced: bool, seed: int
) -> tuple[dict[str, Any], Holdout]:
    """Fit the head as a linear probe on the pooled features (all cached views); load it into
    `model.classifier`. Returns its metrics and the holdout logits for calibration.

    A cache taken before the last blocks (for finetune) is pooled through them first."""
    middle = model.frozen_between(caches.cut, 0)
    with _scratch(caches.train.path.parent.parent) as tmp:
        pooled = [c if middle is None else c.mapped(middle, tmp, c.path.stem, "cpu")
                  for c in (caches.train, caches.val)]  # fmt: skip
        train, val = (np.array(c.array) for c in pooled)  # (V, N, D), in memory
    return _fit_probe_head(model, caches, cfg, train, val, balanced=balanced, seed=seed)


def _fit_probe_head(
    model: SnakeNet,
    caches: Caches,
    cfg: TrainHeadConfig,
    train: np.ndarray,
    val: np.ndarray,
    *,
    balanced: bool,
    seed: int,
) -> tuple[dict[str, Any], Holdout]:
    n_classes = model.classifier.out_features
    yt, yv = caches.train_labels, caches.val_labels
    labels = np.unique(yv)
    common = dict(c=cfg.probe_c, balanced=balanced)
    if cfg.refit:
        every = np.concatenate([train, val], axis=1)
        y = np.concatenate([yt, yv])
        oof = out_of_fold_logits(
            every, y, caches.train_groups + caches.val_groups, n_classes,
            k=cfg.refit_folds, seed=seed, **common,
        )  # fmt: skip
        holdout = Holdout(oof, y, "out-of-fold train+val")
        val_logits = oof[len(yt) :]
        probe = fit_probe(stack_views(every), np.tile(y, len(every)), n_classes, **common)
    else:
        probe = fit_probe(stack_views(train), np.tile(yt, len(train)), n_classes, **common)
        val_logits = probe.logits(val[0])
        holdout = Holdout(val_logits, yv, "val")
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(probe.weight))
        model.classifier.bias.copy_(torch.from_numpy(probe.bias))
    pred = val_logits.argmax(1)
    metrics = {
        "method": "probe",
        "refit": cfg.refit,
        "val_macro_f1": macro_f1(yv, pred, labels),
        "val_accuracy": float((pred == yv).mean()),
        "val_balanced_accuracy": balanced_accuracy(yv, pred, labels),
        "val_loss": _log_loss(val_logits, yv),
        "train_loss": _log_loss(probe.logits(train[0]), yt),
        "n_train": len(yt) + (len(yv) if cfg.refit else 0),
        "n_val": len(yv),
        "views": len(train),
    }
    if cfg.refit:
        all_pred = holdout.logits.argmax(1)
        metrics["oof_macro_f1"] = macro_f1(holdout.labels, all_pred, np.unique(holdout.labels))
    _logger.info(
        "train_head: probe (C=%g%s), val macro-F1 %.4f%s",
        cfg.probe_c, ", refit on train+val" if cfg.refit else "", metrics["val_macro_f1"],
        " (out of fold)" if cfg.refit else "",
    )  # fmt: skip
    return metrics, holdout


@dataclass
class Setup:
    """The sections both training stages read, validated, plus the species list."""

    base: BaseConfig
    data: DataConfig
    loss: LossConfig
    species: list[Species]

    def provenance(self, **sections: Any) -> dict[str, Any]:
        """The params a checkpoint was trained with: configs, or dicts of the keys used."""
        shared = {"base": self.base, "data": self.data, "loss": self.loss}
        return {k: v if isinstance(v, dict) else to_dict(v) for k, v in (shared | sections).items()}


def fit_spec(
    cfg: TrainHeadConfig | FinetuneConfig, setup: Setup, *, epochs: int, lr: float, seed: int
) -> FitSpec:
    return FitSpec(
        epochs=epochs,
        lr=lr,
        weight_decay=cfg.weight_decay,
        select_metric=cfg.select_metric,
        batch_size=setup.data.batch_size,
        sampler=setup.data.sampler,
        loss=setup.loss,
        seed=seed,
        schedule=cfg.schedule,
        warmup_epochs=cfg.warmup_epochs,
        ema_decay=cfg.ema_decay,
        layer_lr_decay=getattr(cfg, "layer_lr_decay", 1.0),
    )


def finetune_settings(head: TrainHeadConfig, cfg: FinetuneConfig, seed: int) -> dict[str, Any]:
    """The finetune stage's epochs, lr and seed, derived from the head's settings."""
    return {
        "epochs": cfg.epochs or max(2, head.epochs // 2),
        "lr": head.lr * cfg.lr_scale,
        "seed": seed + 1,  # a different epoch order from the head stage
    }


def prepare(params: dict[str, Any]) -> Setup:
    """Validate the shared training sections, load species, seed, set threads and, under
    torchrun, join the process group (every rank gets the same seed: same initial weights)."""
    base = base_config(params)
    data = section(params, "data", DataConfig)
    loss = section(params, "loss", LossConfig)
    check_imbalance_options(data, loss)
    species = load_species(base.species_file)
    seed_everything(base.seed, base.deterministic)
    distributed.init(resolve_device(base.device), base.threads)
    return Setup(base, data, loss, species)
