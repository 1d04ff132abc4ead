"""The training loop of the trainable tail on cached features, in small named pieces."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from snakeid.config import BaseConfig
from snakeid.data.dataset import DataConfig
from snakeid.model.engine import feature_engine
from snakeid.model.metrics import validation_scores
from snakeid.model.models import SnakeNet
from snakeid.model.runtime import resolve_device
from snakeid.train import distributed
from snakeid.train.config import FitSpec, LossConfig, check_imbalance_options, class_weights
from snakeid.train.features import Caches, FeatureCache, scratch_near
from snakeid.train.live import EpochLog
from snakeid.utils import Progress

_logger = logging.getLogger(__name__)


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
    *,
    train: FeatureCache,
    train_labels: np.ndarray,
    val: FeatureCache,
    val_labels: np.ndarray,
    labels: Sequence[int],
    spec: FitSpec,
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
    rng = np.random.default_rng(spec.seed)
    objective = Objective.build(train_labels, model.classifier.out_features, spec.loss, device)
    positions = distributed.shard(np.arange(len(train)))  # this rank's places in each order
    batch = -(-spec.batch_size // distributed.world_size())  # per rank
    optimizer, scheduler = _optimizer(param_groups, spec, math.ceil(len(positions) / batch))
    ema = _Ema(tail, spec.ema_decay) if spec.ema_decay > 0 else None
    net = _data_parallel(tail, device, spec.seed)
    steps = _Steps(net, tail, objective, optimizer, scheduler, ema, device)
    draw = _sampler(train_labels, objective.counts, spec.sampler)
    history, best, best_epoch, best_state, best_logits = [], -math.inf, 0, None, None
    for epoch in range(1, spec.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        order = draw(rng)
        view = rng.integers(0, train.views, len(train))
        train_loss, train_acc = steps.epoch(train, train_labels, order[positions], view[positions],
                                            batch)  # fmt: skip
        seconds = time.perf_counter() - started
        with ema.applied() if ema else contextlib.nullcontext():
            row, val_logits = _validate(tail, val, val_labels, labels, device)
            row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc} | row
            row |= {"lr": lr, "seconds": seconds, "images_per_s": len(train) / seconds}
            if row[f"val_{spec.select_metric}"] > best:  # strict: ties keep the earlier epoch
                best, best_epoch, best_logits = row[f"val_{spec.select_metric}"], epoch, val_logits
                best_state = copy.deepcopy(model.state_dict())
        history.append(row)
        if on_epoch:
            on_epoch(row)
    assert best_state is not None and best_logits is not None
    return FitResult(history, best_epoch, history[best_epoch - 1], best_state, best_logits)


@dataclass
class Objective:
    """Cross-entropy with the configured class weights and label smoothing, on logit-adjusted
    logits: the loss sees logits + tau·log(prior), so the model learns to beat the prior."""

    criterion: nn.Module
    adjust: torch.Tensor
    counts: np.ndarray  # training photos per class

    @classmethod
    def build(cls, labels: np.ndarray, n_classes: int, loss: LossConfig, device: str) -> Objective:
        counts = np.bincount(labels, minlength=n_classes)
        weights = class_weights(counts, loss)
        criterion = nn.CrossEntropyLoss(
            weight=None if weights is None else weights.to(device),
            label_smoothing=loss.label_smoothing,
        )
        prior = np.maximum(counts, 1) / counts.sum()
        adjust = torch.tensor(loss.logit_adjustment * np.log(prior), dtype=torch.float32)
        return cls(criterion, adjust.to(device), counts)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits + self.adjust, y)


def _optimizer(
    param_groups: list[dict[str, Any]], spec: FitSpec, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its per-step schedule: linear warm-up, then constant or cosine."""
    optimizer = torch.optim.AdamW(param_groups, lr=spec.lr, weight_decay=spec.weight_decay)
    total = steps_per_epoch * spec.epochs
    warmup = min(spec.warmup_epochs * steps_per_epoch, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, spec.schedule)
    )
    return optimizer, scheduler


def _data_parallel(tail: nn.Module, device: str, seed: int) -> nn.Module:
    """`tail` itself, or under torchrun wrapped in DistributedDataParallel."""
    if distributed.world_size() == 1:
        return tail
    # Buffers (BatchNorm statistics) are averaged after each step, not rank 0's broadcast.
    ids = [torch.cuda.current_device()] if device.startswith("cuda") else None
    net = DistributedDataParallel(tail, device_ids=ids, forward_sync_buffers=False)
    # Same weights (DDP copies rank 0's at the start), but independent dropout masks.
    torch.manual_seed(int(np.random.SeedSequence([seed, distributed.rank()]).generate_state(1)[0]))
    return net


def _sampler(
    labels: np.ndarray, counts: np.ndarray, sampler: str
) -> Callable[[np.random.Generator], np.ndarray]:
    """Each epoch's order of the training photos: a permutation, or with `balanced` each photo
    drawn with probability ∝ 1 / its class count (classes equally likely)."""
    n = len(labels)
    if sampler != "balanced":
        return lambda rng: rng.permutation(n)
    p = 1.0 / counts[labels]
    p = p / p.sum()
    return lambda rng: rng.choice(n, n, p=p)


@dataclass
class _Steps:
    """The optimiser steps of one epoch on this rank's share of the photos."""

    net: nn.Module  # `tail`, or its DDP wrapper
    tail: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: _Ema | None
    device: str

    def epoch(
        self, cache: FeatureCache, labels: np.ndarray, idx: np.ndarray, view: np.ndarray, batch: int
    ) -> tuple[float, float]:
        """Train on photos `idx` (views `view`) in batches; (mean loss, accuracy) over all ranks."""
        self.tail.train()
        y_all = torch.from_numpy(labels).long()
        sync = distributed.world_size() > 1 and any(
            b.dtype.is_floating_point for b in self.tail.buffers()
        )
        total_loss, correct, seen = 0.0, 0, 0
        for i in range(0, len(idx), batch):
            x = cache.batch(view[i : i + batch], idx[i : i + batch]).to(self.device)
            y = y_all[idx[i : i + batch]].to(self.device)
            logits = self.net(x)
            loss = self.objective(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if sync:
                distributed.average_buffers(self.tail)
            if self.ema:
                self.ema.update()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        total_loss, correct, seen = distributed.all_sum(np.array([total_loss, correct, seen]))
        return float(total_loss / seen), float(correct / seen)


def _validate(
    tail: nn.Module, val: FeatureCache, val_labels: np.ndarray, labels: Sequence[int], device: str
) -> tuple[dict[str, float], np.ndarray]:
    """Val loss and scores of the tail as it is now, and its val logits."""
    val_loss, logits = predict_cached(tail, val, device=device, labels=val_labels)
    return {"val_loss": val_loss, **validation_scores(val_labels, logits.argmax(1), labels)}, logits


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


@dataclass
class StageResult:
    model: SnakeNet
    fit: FitResult
    metrics: dict[str, Any]
    val_labels: np.ndarray


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
    progress = Progress(fit.epochs, f"{stage}: epochs", "epoch", show=distributed.is_main(),
                        every_s=0)  # fmt: skip
    with progress, scratch_near(caches.root) as tmp:
        train, val = caches.train, caches.val
        if middle is not None:
            train = train.mapped(middle, tmp, "train", device)
            val = val.mapped(middle, tmp, "val", device)
        result = fit_tail(
            model, tail, model.param_groups(unfreeze_blocks, fit.lr, fit.layer_lr_decay),
            train=train, train_labels=caches.train_labels, val=val,
            val_labels=caches.val_labels, labels=np.unique(caches.val_labels), spec=fit,
            device=device, on_epoch=_epoch_logger(progress, log),
        )  # fmt: skip
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
    metrics = _stage_report(model, result, caches, fit, unfreeze_blocks, data=data, device=device,
                            trainable=sum(p.numel() for p in params))  # fmt: skip
    return StageResult(model, result, metrics, caches.val_labels)


# the best epoch's numbers in a training stage's report
REPORTED = (
    "val_accuracy", "val_macro_f1", "val_balanced_accuracy", "val_loss", "train_loss",
)  # fmt: skip


def _stage_report(
    model: SnakeNet,
    result: FitResult,
    caches: Caches,
    fit: FitSpec,
    unfreeze_blocks: int,
    *,
    data: DataConfig,
    device: str,
    trainable: int,
) -> dict[str, Any]:
    """A training stage's report: the best epoch's numbers and how they were made. No timings:
    `dvc repro --force` twice must give identical files."""
    return {k: result.best[k] for k in REPORTED} | {
        "best_epoch": result.best_epoch,
        "epochs": fit.epochs,
        "select_metric": fit.select_metric,
        "n_train": len(caches.train_labels),
        "n_val": len(caches.val_labels),
        "views": caches.train.views,
        "feature_engine": feature_engine(data.feature_engine, device),
        "unfreeze_blocks": unfreeze_blocks,
        "trainable_parameters": trainable,
        "backbone": "+".join(model.backbones),
        "image_size": model.input_size,
        "device": device,
        "processes": distributed.world_size(),
        "batch_size": fit.batch_size,  # global: each process takes batch_size / processes
    }


def _epoch_logger(progress: Progress, log: EpochLog | None) -> Callable[[dict[str, float]], None]:
    """Each finished epoch to DVCLive (`log`) and to the progress bar or log line."""

    def on_epoch(row: dict[str, float]) -> None:
        if log is not None:
            log.epoch(row)
        progress.update(loss=f"{row['train_loss']:.3f}", val_f1=f"{row['val_macro_f1']:.3f}",
                        img_s=f"{row['images_per_s']:.0f}")  # fmt: skip

    return on_epoch
