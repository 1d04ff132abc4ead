"""The linear probe: an L2-regularised logistic regression on standardised, frozen, pooled features.

On real photos (bench/cv.md) this beats training the same linear head with AdamW over epochs,
and it needs no epoch selection: the fit is a convex problem solved to convergence (L-BFGS), so
the same features and labels give the same weights. That also makes "refit on train+val" sound:
no val photos are needed to choose an epoch, and out-of-fold logits (grouped k-fold over the
training photos) stand in for val logits when the temperature and the venomous threshold are
fitted.

The standardisation is folded into the linear layer (W' = W / σ, b' = b − W' · μ), so the
exported model is the same `Linear` as any other head.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_logger = logging.getLogger(__name__)

ABSENT_BIAS = -1e4  # logit of a species with no training photo: never predicted


@dataclass(frozen=True)
class Probe:
    """Linear head weights on raw (unstandardised) features: logits = x @ weight.T + bias."""

    weight: np.ndarray  # (C, D) float32
    bias: np.ndarray  # (C,) float32

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32) @ self.weight.T + self.bias


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    c: float,
    balanced: bool = False,
    sample_weight: np.ndarray | None = None,
) -> Probe:
    """Fit on rows `x` (N, D) with labels `y`; `c` is the inverse L2 strength (scikit-learn's C).

    `balanced` weights each class inversely to its row count; `sample_weight` (N,) weights each
    row's loss (a cost-weighted objective). Classes without rows get the weight 0 and
    `ABSENT_BIAS`, so they are never predicted.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = x.astype(np.float64)
    mean = x.mean(0)
    std = x.std(0) + 1e-6
    present = np.unique(y)
    weight = np.zeros((n_classes, x.shape[1]))
    bias = np.full(n_classes, ABSENT_BIAS)
    if len(present) == 1:  # nothing to separate: that class everywhere
        bias[present[0]] = 0.0
        return Probe(weight.astype(np.float32), bias.astype(np.float32))
    lr = LogisticRegression(C=c, max_iter=1000, class_weight="balanced" if balanced else None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # never ship a half-fitted probe
        lr.fit((x - mean) / std, y, sample_weight=sample_weight)
    w = lr.coef_ / std  # fold the standardisation into the layer
    b = lr.intercept_ - w @ mean
    if len(lr.classes_) == 2:  # one row, the log-odds of the second class: split it in two
        w, b = np.concatenate([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
    weight[lr.classes_] = w
    bias[lr.classes_] = b
    return Probe(weight.astype(np.float32), bias.astype(np.float32))


def grouped_folds(labels: np.ndarray, groups: Sequence[str], k: int, seed: int) -> list[np.ndarray]:
    """Fold index (0..k-1) per photo: stratified by label, photos of one group in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    fold = np.full(len(labels), -1)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, list(groups))):
        fold[held] = i
    return fold


def out_of_fold_logits(
    views: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    n_classes: int,
    *,
    c: float,
    balanced: bool,
    sample_weight: np.ndarray | None = None,
) -> np.ndarray:
    """Logits (N, C) of each photo's view 0 from a probe fitted without its fold's photos.

    `views` is (V, N, D): view 0 the eval transform, the others augmented training views;
    `folds` (N,) from `grouped_folds`, so that an observation's photos share a fold;
    `sample_weight` (N,) each photo's loss weight (`fit_probe`).
    """
    out = np.zeros((len(y), n_classes), np.float32)
    for f in np.unique(folds):
        held, kept = folds == f, folds != f
        w = None if sample_weight is None else np.tile(sample_weight[kept], len(views))
        probe = fit_probe(
            stack_views(views[:, kept]), np.tile(y[kept], len(views)), n_classes,
            c=c, balanced=balanced, sample_weight=w,
        )  # fmt: skip
        out[held] = probe.logits(views[0, held].astype(np.float32))
    return out


def stack_views(views: np.ndarray) -> np.ndarray:
    """(V, N, D) → (V·N, D), view-major (labels: `np.tile(y, V)`)."""
    return views.reshape(-1, views.shape[-1]).astype(np.float32)
