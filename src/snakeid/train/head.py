"""The linear-probe head (`train_head.method: probe`) and the holdout logits for calibration."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from snakeid.model.metrics import macro_f1, validation_scores
from snakeid.model.models import SnakeNet
from snakeid.model.probe import fit_probe, grouped_folds, out_of_fold_logits, stack_views
from snakeid.train.config import TrainHeadConfig
from snakeid.train.features import Caches, pooled_views

_logger = logging.getLogger(__name__)


@dataclass
class Holdout:
    """Logits of photos no part of the model trained on, for calibration: the val photos, or
    with a refit, train+val photos each predicted by a probe fitted without its observation's
    fold. A trunk adapted on the train photos (`adapt.backbones`) has seen them, so then only
    the val photos' out-of-fold logits calibrate (`rows`)."""

    logits: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)
    source: str  # "val" | "out-of-fold train+val" | "out-of-fold val"
    folds: np.ndarray | None = None  # out-of-fold: each train+val photo's fold (train, then val)
    rows: np.ndarray | None = None  # out-of-fold: the N photos' indices among train+val

    def state(self) -> dict[str, Any]:
        """As the checkpoint stores it."""

        def tensor(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(a).long()

        return {
            "logits": torch.from_numpy(self.logits).float(),
            "labels": torch.from_numpy(self.labels).long(),
            "source": self.source,
            "folds": tensor(self.folds),
            "rows": tensor(self.rows),
        }


def _log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    return float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item())


def train_probe(
    model: SnakeNet,
    caches: Caches,
    cfg: TrainHeadConfig,
    *,
    balanced: bool,
    seed: int,
    trunk_saw_train: bool = False,
) -> tuple[dict[str, Any], Holdout]:
    """Fit the head as a linear probe on the pooled features (all cached views); load it into
    `model.classifier`. Returns its metrics and the holdout logits for calibration: with
    `trunk_saw_train` (a trunk adapted on the train photos) never a train photo's.

    A cache taken before the last blocks (for finetune) is pooled through them first."""
    train, val = pooled_views(model, caches, "cpu")  # (V, N, D), in memory
    return _fit_probe_head(model, caches, cfg, train, val, balanced=balanced, seed=seed,
                           trunk_saw_train=trunk_saw_train)  # fmt: skip


def _fit_probe_head(
    model: SnakeNet,
    caches: Caches,
    cfg: TrainHeadConfig,
    train: np.ndarray,
    val: np.ndarray,
    *,
    balanced: bool,
    seed: int,
    trunk_saw_train: bool,
) -> tuple[dict[str, Any], Holdout]:
    n_classes = model.classifier.out_features
    yt, yv = caches.train_labels, caches.val_labels
    labels = np.unique(yv)
    common = dict(c=cfg.probe_c, balanced=balanced)
    if cfg.refit:
        every = np.concatenate([train, val], axis=1)
        y = np.concatenate([yt, yv])
        # the unknown-species score is fitted on these folds too (finetune)
        folds = grouped_folds(y, caches.train_groups + caches.val_groups, cfg.refit_folds, seed)
        oof = out_of_fold_logits(every, y, folds, n_classes, **common)
        rows = np.arange(len(yt) if trunk_saw_train else 0, len(y))
        source = "out-of-fold val" if trunk_saw_train else "out-of-fold train+val"
        holdout = Holdout(oof[rows], y[rows], source, folds, rows)
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
        **validation_scores(yv, pred, labels),
        "val_loss": _log_loss(val_logits, yv),
        "train_loss": _log_loss(probe.logits(train[0]), yt),
        "n_train": len(yt) + (len(yv) if cfg.refit else 0),
        "n_val": len(yv),
        "views": len(train),
    }
    if cfg.refit:  # on the photos that calibrate: the honest estimate
        all_pred = holdout.logits.argmax(1)
        metrics["oof_macro_f1"] = macro_f1(holdout.labels, all_pred, np.unique(holdout.labels))
    _logger.info(
        "train_head: probe (C=%g%s), val macro-F1 %.4f%s",
        cfg.probe_c, ", refit on train+val" if cfg.refit else "", metrics["val_macro_f1"],
        " (out of fold)" if cfg.refit else "",
    )  # fmt: skip
    return metrics, holdout
