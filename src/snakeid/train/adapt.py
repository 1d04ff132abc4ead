"""Adapting backbones to snakes: fine-tune a trunk end to end before its features are cached.

The cached-feature stages never change what a trunk computes before their cut. Here a trunk
(`adapt.backbones`) trains whole, on live augmented photos, under a temporary linear head that
is then thrown away: what stays is the trunk's weights, from which `train_head` caches features
and fits its head as usual. `bench/openset.py --adapt` measures it on real photos, per fold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from snakeid.data.dataset import DataConfig, SplitDataset, train_transform
from snakeid.errors import UserError
from snakeid.model.models import SnakeNet, Trunk
from snakeid.model.runtime import worker_seed
from snakeid.taxa import Species
from snakeid.train import distributed
from snakeid.train.config import AdaptConfig
from snakeid.utils import Progress

_logger = logging.getLogger(__name__)

HEAD_LR_SCALE = 10.0  # the temporary head starts from random weights: it learns 10x faster
WARMUP = 0.15  # share of the steps the one-cycle schedule spends rising to its peak


def check_adapt(cfg: AdaptConfig, model: SnakeNet) -> None:
    """Refuse settings adaptation cannot honour, before any work."""
    unknown = [b for b in cfg.backbones if b not in model.backbones]
    if unknown:
        raise UserError(
            f"adapt.backbones: {unknown[0]!r} is not in base.backbone "
            f"({', '.join(model.backbones)})"
        )
    if len(set(cfg.backbones)) != len(cfg.backbones):
        raise UserError(f"adapt.backbones: a backbone is listed twice ({cfg.backbones})")
    if cfg.backbones and distributed.world_size() > 1:
        raise UserError(
            "adapt.backbones trains in one process: set distributed.nproc: 1 (or adapt none)"
        )


def adapt_trunks(
    model: SnakeNet,
    rows: Sequence[dict[str, str]],
    species: Sequence[Species],
    cfg: AdaptConfig,
    *,
    data: DataConfig,
    seed: int,
    device: str,
) -> dict[str, Any]:
    """Fine-tune each trunk of `model` named in `cfg.backbones` on `rows`, in place; the
    per-epoch training loss and accuracy of each (no timings: reports must repeat exactly)."""
    check_adapt(cfg, model)
    augment = train_transform(
        model.input_size, augment=data.augment, random_erasing=data.random_erasing
    )
    dataset = SplitDataset(rows, species, augment)
    report: dict[str, Any] = {}
    for i, name in enumerate(cfg.backbones):
        trunk = model.trunks[model.backbones.index(name)]
        history = _adapt(trunk, dataset, len(species), model.dropout.p, cfg, data,
                         seed=seed + i, device=device)  # fmt: skip
        report[name] = {"photos": len(dataset), "epochs": cfg.epochs, "history": history}
    return report


def _adapt(
    trunk: Trunk,
    dataset: SplitDataset,
    n_classes: int,
    dropout: float,
    cfg: AdaptConfig,
    data: DataConfig,
    *,
    seed: int,
    device: str,
) -> list[dict[str, float]]:
    torch.manual_seed(seed)  # the temporary head's initial weights, then the augmentations
    head = nn.Linear(trunk.dim, n_classes)
    # channels_last: 1.7x faster training steps on CPU (oneDNN), and the layout GPUs prefer
    net = nn.Sequential(trunk, nn.Dropout(dropout), head)
    net.to(device, memory_format=torch.channels_last).requires_grad_(True)
    drop_last = len(dataset) > data.batch_size  # a last batch of one photo would break BatchNorm
    loader = DataLoader(
        dataset, batch_size=data.batch_size, shuffle=True, drop_last=drop_last,
        num_workers=data.workers, worker_init_fn=worker_seed,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    steps = cfg.epochs * len(loader)
    lrs = [cfg.lr, cfg.lr * HEAD_LR_SCALE]
    optimizer = torch.optim.AdamW(
        [{"params": trunk.parameters(), "lr": lrs[0]}, {"params": head.parameters(), "lr": lrs[1]}],
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lrs, total_steps=steps, pct_start=WARMUP
    )
    objective = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history = []
    with Progress(total=steps, desc=f"adapt {trunk.name}", unit="step") as progress:
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in loader:
                x = x.to(device, memory_format=torch.channels_last)
                y = y.to(device)
                logits = net(x)
                loss = objective(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                progress.update(1)
            row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen}
            _logger.info("adapt %s: epoch %d, train loss %.4f, accuracy %.3f", trunk.name,
                         epoch, row["train_loss"], row["train_accuracy"])  # fmt: skip
            history.append(row)
    trunk.to("cpu", memory_format=torch.contiguous_format).eval()
    if not np.isfinite(history[-1]["train_loss"]):
        raise UserError(f"adapt {trunk.name}: the training loss diverged; lower adapt.lr")
    return history
