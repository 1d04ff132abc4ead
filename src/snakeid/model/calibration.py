"""Post-hoc decisions fitted on the validation split: temperature scaling and the venomous rule
(the unknown-species score and threshold: `snakeid.model.openset`; the verdict they feed:
`snakeid.model.decision`).

All are chosen on val only (never on test) by the `finetune` stage, stored in the checkpoint,
baked into / written beside the exported model, and reported on test by `evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from snakeid.taxa import Species


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / T in float64 (the row max subtracted: large logits stay
    finite). The one softmax of the library and of `snakeid predict`."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-12)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising val NLL of softmax(logits / T) (Guo et al., 2017).

    A log-spaced grid then a finer grid around the best point: deterministic, no optimiser state,
    and accurate to well under 1 % in T, which is plenty for calibration.
    """
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
    best = min(grid, key=lambda t: nll(logits, labels, t))
    fine = best * np.exp(np.linspace(-0.03, 0.03, 61))
    return float(min(fine, key=lambda t: nll(logits, labels, t)))


def venomous_probability(probs: np.ndarray, venomous: Sequence[bool]) -> np.ndarray:
    """P(the snake is of any venomous species) = summed probability of venomous classes."""
    return probs[:, np.asarray(venomous, dtype=bool)].sum(1)


def bayes_threshold(cost_ratio: float) -> float:
    """The "possibly venomous" threshold of a Bayes decision: warn when P(venomous) ≥ 1 / (1 + k),
    where missing a venomous snake costs k times a needless warning. On calibrated
    probabilities that minimises the expected cost; unlike a threshold set at the hardest
    held-out venomous photo, it does not move with one outlier (bench/cv.md)."""
    return 1.0 / (1.0 + cost_ratio)


def venomous_tradeoff(p_venomous: np.ndarray, is_venomous: np.ndarray) -> list[dict[str, Any]]:
    """The venomous rule at every threshold that changes its decisions (each photo's
    P(venomous), ascending): `tradeoff_point` at each. Empty when either kind of photo is
    missing."""
    is_venomous = np.asarray(is_venomous, dtype=bool)
    if is_venomous.all() or not is_venomous.any():
        return []
    return [tradeoff_point(p_venomous, is_venomous, float(t)) for t in np.unique(p_venomous)]


def tradeoff_point(
    p_venomous: np.ndarray, is_venomous: np.ndarray, threshold: float
) -> dict[str, Any]:
    """The rule at `threshold`: the share of venomous photos it misses and of harmless photos
    it lets pass without a warning (None where there are no such photos)."""
    rule = venomous_rule_report(p_venomous, is_venomous, threshold)
    flagged = rule["harmless_flagged_rate"]
    return {
        "threshold": threshold,
        "venomous_missed": rule["venomous_missed_rate"],
        "harmless_passed": None if flagged is None else 1 - flagged,
    }


def venomous_rule_report(
    p_venomous: np.ndarray, is_venomous: np.ndarray, threshold: float
) -> dict[str, float | None]:
    """How the rule does: venomous photos not flagged, harmless photos flagged."""
    is_venomous = np.asarray(is_venomous, dtype=bool)
    flagged = p_venomous >= threshold
    n_v, n_h = int(is_venomous.sum()), int((~is_venomous).sum())
    return {
        "threshold": threshold,
        "venomous_missed_rate": float((~flagged & is_venomous).sum() / n_v) if n_v else None,
        "harmless_flagged_rate": float((flagged & ~is_venomous).sum() / n_h) if n_h else None,
    }


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: Σ_b |acc_b − conf_b| · n_b / N."""
    conf = probs.max(1)
    correct = probs.argmax(1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right-closed bins (a, b]; confidence 0 cannot occur for a softmax
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += abs(correct[m].mean() - conf[m].mean()) * m.mean()
    return float(ece)


def calibrate_on_val(
    logits: np.ndarray,
    labels: np.ndarray,
    species: Sequence[Species],
    *,
    temperature_scaling: bool,
    cost_ratio: float,
    low_confidence: float,
) -> dict[str, Any]:
    """Fit the temperature on val logits, set the venomous threshold for `cost_ratio`
    (`bayes_threshold`) and carry the low-confidence threshold; report their effect on those
    photos."""
    t = fit_temperature(logits, labels) if temperature_scaling else 1.0
    probs = softmax(logits, t)
    venomous = [s.venomous for s in species]
    is_v = np.asarray(venomous)[labels]
    pv = venomous_probability(probs, venomous)
    threshold = bayes_threshold(cost_ratio)
    return {
        "temperature": t,
        "venomous_threshold": threshold,
        "low_confidence_threshold": low_confidence,
        "val_ece_before": expected_calibration_error(labels, softmax(logits)),
        "val_ece_after": expected_calibration_error(labels, probs),
        "val_nll_before": nll(logits, labels, 1.0),
        "val_nll_after": nll(logits, labels, t),
        "val_venomous_rule": venomous_rule_report(pv, is_v, threshold),
    }


def ranked(probs: np.ndarray, k: int | None = None) -> np.ndarray:
    """Class indices by probability along the last axis, highest first and ties in class order
    (a stable sort, so every consumer ranks alike); the first `k`."""
    return np.argsort(-probs, axis=-1, kind="stable")[..., :k]
