"""Test-split evaluation: headline metrics with intervals, per species, and error-analysis files."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from snakeid.config import spec
from snakeid.data.dataset import SplitDataset, eval_transform
from snakeid.errors import UserError
from snakeid.model.calibration import (
    expected_calibration_error,
    ranked,
    softmax,
    tradeoff_point,
    venomous_probability,
    venomous_rule_report,
    venomous_tradeoff,
)
from snakeid.model.decision import (
    CAUSES,
    HARMLESS,
    VERDICTS,
    causes,
    flagged_unknown,
    verdicts,
)
from snakeid.model.metrics import (
    bootstrap_intervals,
    classification_report,
)
from snakeid.model.openset import open_set_rates
from snakeid.taxa import Species, label_index
from snakeid.utils import Progress

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    bootstrap: int = field(default=1000, metadata=spec(ge=100))
    ece_bins: int = field(default=15, metadata=spec(ge=2))


# The DVC metrics of `evaluate`: the headline numbers. The rest of `Evaluation.metrics` is the
# stage's report; per-species scores are a plot (`per_species_rows`).
HEADLINE = (
    "macro_f1",
    "macro_f1_ci95",
    "accuracy",
    "accuracy_ci95",
    "balanced_accuracy",
    "balanced_accuracy_ci95",
    "top3_accuracy",
    "ece",
    "venomous_to_harmless_rate",
)
RULE_HEADLINE = ("venomous_missed_rate", "harmless_flagged_rate")
VERDICT_HEADLINE = (
    "harmless_no_warning_rate",
    "venomous_no_warning_rate",
    "unknown_venomous_no_warning_rate",
)
OPENSET_HEADLINE = ("auroc", "unknown_flagged_rate", "known_flagged_rate", "dangerous_rate")


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of an evaluation's metrics."""
    rule, openset, verdict = metrics["venomous_rule"], metrics["openset"], metrics["verdicts"]
    return {k: metrics[k] for k in HEADLINE} | {
        "verdicts": {k: verdict[k] for k in VERDICT_HEADLINE},
        "venomous_rule": {k: rule[k] for k in RULE_HEADLINE},
        "openset": {k: openset[k] for k in OPENSET_HEADLINE},
    }


def per_species_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per species with test photos, as `dvc plots` reads them (a bar chart of F1)."""
    return [
        {"species": name} | {k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()}
        for name, m in metrics["per_species"].items()
    ]


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    rows: list[dict[str, str]]  # the test photos evaluated
    probs: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)
    unknown_scores: np.ndarray  # (N,) the unknown-species score
    unknown_threshold: float  # flagged "unknown" above it
    causes: np.ndarray  # (N,) why each photo got its verdict (`snakeid.model.decision.causes`)


def predict_scores(
    run: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]],
    rows: Sequence[dict[str, str]],
    image_size: int,
    *,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated logits (N, C) and unknown-species scores (N,) of `run` (the deployed model as
    `snakeid.model.engine.prefix_engine` runs it) on `rows` through the shared eval transform. The
    rows' taxa need not be the model's: the labels are not read."""
    ds = SplitDataset(rows, None, eval_transform(image_size))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    logits, scores = [], []
    with Progress(len(loader), "predict", "batch") as progress:
        for x, _ in loader:
            z, u = run(x)
            logits.append(z)
            scores.append(u)
            progress.update()
    return np.concatenate(logits), np.concatenate(scores)


def evaluate(
    predict: Callable[[list[dict[str, str]]], tuple[np.ndarray, np.ndarray]],
    test_rows: Sequence[dict[str, str]],
    train_rows: Sequence[dict[str, str]],
    species: Sequence[Species],
    cfg: EvaluateConfig,
    *,
    seed: int,
    calibration: dict[str, Any],
    unknown_threshold: float,
    unknown_rows: Sequence[dict[str, str]] = (),
    unknown_species: Sequence[Species] = (),
) -> Evaluation:
    """Metrics of `predict` (rows → calibrated logits, unknown-species scores) on the test
    photos of trained species, and of its unknown-species flag on those and on `unknown_rows`
    (photos of `unknown_species`, held out of training).

    Test photos of a species with no training photos cannot be right: they are excluded and
    counted. Macro averages run over every species with test photos, predicted or not.
    The logits are calibrated (temperature from `calibration`, fitted on val); the ECE is also
    reported for the uncalibrated ones, and the venomous rule (threshold from `calibration`) is
    scored beside the argmax decision.
    """
    index = label_index(species)
    kept, excluded, y = _trained_species_rows(test_rows, train_rows, index)
    logits, scores = predict(kept)
    probs = softmax(logits)
    labels = sorted(set(y.tolist()))
    report = classification_report(y, probs, species, labels, ece_bins=cfg.ece_bins)
    t = calibration["temperature"]
    venomous = [s.venomous for s in species]
    p_venomous, is_venomous = venomous_probability(probs, venomous), np.asarray(venomous)[y]
    rule = venomous_rule_report(p_venomous, is_venomous, calibration["venomous_threshold"])
    cause = verdict_causes(probs, scores, species, calibration, unknown_threshold)
    intervals = bootstrap_intervals(y, probs.argmax(1), labels, resamples=cfg.bootstrap, seed=seed)
    openset = _openset(predict, scores, unknown_rows, species, unknown_species,
                       threshold=unknown_threshold, calibration=calibration)  # fmt: skip
    # what a person is told (`snakeid.model.decision`), by the photo's true kind
    verdicts = _verdict_report(cause, is_venomous)
    verdicts["unknown_venomous_no_warning_rate"] = openset.pop("unknown_venomous_no_warning_rate")
    per_species = report.pop("per_species")
    n_test = report.pop("n")
    metrics = {
        **report,
        **intervals,
        "n_test": n_test,
        "temperature": t,
        # the model's output is logits / T
        "ece_uncalibrated": expected_calibration_error(y, softmax(logits * t), cfg.ece_bins),
        "verdicts": verdicts,
        # "possibly venomous" rule: flagged when P(any venomous species) ≥ threshold
        "venomous_rule": rule,
        "n_excluded_untrained_species": sum(excluded.values()),
        "excluded_untrained_species": dict(sorted(excluded.items())),
        "species_without_test_photos": [s.name for s in species if index[s.name] not in labels],
        "bootstrap_resamples": cfg.bootstrap,
        "openset": openset,
        "per_species": per_species,
    }
    return Evaluation(metrics, kept, probs, y, scores, unknown_threshold, cause)


def _trained_species_rows(
    test_rows: Sequence[dict[str, str]],
    train_rows: Sequence[dict[str, str]],
    index: dict[str, int],
) -> tuple[list[dict[str, str]], Counter[str], np.ndarray]:
    """The test rows of species with training photos (`evaluable`), the others' count per
    species (with a warning; none kept is an error), and the kept rows' labels by `index`."""
    kept, excluded = evaluable(test_rows, train_rows)
    if excluded:
        _logger.warning(
            "excluded %d test photos of species absent from training: %s",
            sum(excluded.values()),
            dict(excluded),
        )
    if not kept:
        raise UserError("no test photo of a species the model was trained on: nothing to evaluate")
    return kept, excluded, np.array([index[r["taxon"]] for r in kept])


def verdict_causes(
    probs: np.ndarray,
    scores: np.ndarray,
    species: Sequence[Species],
    calibration: dict[str, Any],
    unknown_threshold: float,
) -> np.ndarray:
    """Each photo's verdict cause (`snakeid.model.decision.causes`) as `snakeid predict` decides it,
    from calibrated probabilities, unknown-species scores and the thresholds in `calibration`
    (the checkpoint's, or `model_meta.json`'s `decision`)."""
    return causes(
        probs,
        [s.venomous for s in species],
        flagged_unknown(scores, unknown_threshold),
        venomous_threshold=calibration["venomous_threshold"],
        low_confidence_threshold=calibration["low_confidence_threshold"],
    )


def _verdict_report(cause: np.ndarray, is_venomous: np.ndarray) -> dict[str, Any]:
    """Verdicts and their causes by the photos' true kind, and the share of each kind told
    `harmless` (no warning of any kind)."""
    verdict = verdicts(cause)
    out: dict[str, Any] = {}
    for kind, mask in (("venomous", is_venomous), ("harmless", ~is_venomous)):
        n = int(mask.sum())
        passed = float((verdict[mask] == HARMLESS).sum() / n) if n else None
        out[f"{kind}_no_warning_rate"] = passed
        out[f"{kind}_photos"] = {v: int((verdict[mask] == v).sum()) for v in VERDICTS}
        out[f"{kind}_causes"] = {c: int((cause[mask] == c).sum()) for c in CAUSES}
    return out


def _openset(
    predict: Callable[[list[dict[str, str]]], tuple[np.ndarray, np.ndarray]],
    known_scores: np.ndarray,
    unknown_rows: Sequence[dict[str, str]],
    species: Sequence[Species],
    unknown_species: Sequence[Species],
    *,
    threshold: float,
    calibration: dict[str, Any],
) -> dict[str, Any]:
    """The unknown-species flag on known test photos and on photos of held-out species
    (`snakeid.model.openset.open_set_rates`), the share flagged of each held-out species, and the
    share of held-out venomous photos told `harmless` (None without any)."""
    out: dict[str, Any] = {
        "threshold": threshold,
        "n_known": len(known_scores),
        "n_unknown": len(unknown_rows),
        "unknown_species": [s.name for s in unknown_species],
    }
    if unknown_rows:
        logits, scores = predict(list(unknown_rows))
    else:
        logits, scores = np.zeros((0, len(species))), np.zeros(0)
    probs = softmax(logits)
    known_venomous = np.array([s.venomous for s in species])
    venomous_of = {s.name: s.venomous for s in unknown_species}
    is_venomous = np.array([venomous_of[r["taxon"]] for r in unknown_rows], dtype=bool)
    flagged = flagged_unknown(scores, threshold)
    per = {
        s.name: {
            "photos": int(m.sum()),
            "flagged_rate": float(flagged[m].mean()) if m.any() else None,
            "venomous": s.venomous,
        }
        for s in unknown_species
        for m in [np.array([r["taxon"] == s.name for r in unknown_rows], dtype=bool)]
    }
    rates = open_set_rates(
        known_scores,
        scores,
        threshold,
        top1_harmless=~known_venomous[probs.argmax(1)],
        p_venomous=venomous_probability(probs, known_venomous),
        venomous_threshold=calibration["venomous_threshold"],
        venomous=is_venomous,
    )
    told = verdicts(verdict_causes(probs, scores, species, calibration, threshold))
    n_v = int(is_venomous.sum())
    passed = float((told[is_venomous] == HARMLESS).sum() / n_v) if n_v else None
    return (
        out
        | rates
        | {"n_unknown_venomous": n_v, "per_unknown_species": per}
        | {"unknown_venomous_no_warning_rate": passed}
    )


def evaluable(
    test_rows: Sequence[dict[str, str]], train_rows: Sequence[dict[str, str]]
) -> tuple[list[dict[str, str]], Counter[str]]:
    """Test rows of species seen in training, and the count of the others per species."""
    trained = {r["taxon"] for r in train_rows}
    kept = [r for r in test_rows if r["taxon"] in trained]
    return kept, Counter(r["taxon"] for r in test_rows if r["taxon"] not in trained)


def prediction_rows(
    ev: Evaluation, species: Sequence[Species], *, k: int = 3
) -> list[dict[str, Any]]:
    """One row per test photo: truth, prediction, the verdict and its cause as `snakeid predict`
    decides them (`possibly_venomous`: any verdict but harmless), the unknown-species flag and
    the top-k with probabilities."""
    p_venomous = venomous_probability(ev.probs, [s.venomous for s in species])
    unknown = flagged_unknown(ev.unknown_scores, ev.unknown_threshold)
    verdict = verdicts(ev.causes)
    out = []
    for i, (row, p, y, pv) in enumerate(zip(ev.rows, ev.probs, ev.labels, p_venomous, strict=True)):
        top = ranked(p, k)
        rec: dict[str, Any] = {
            "path": row["path"],
            "photo_id": row["photo_id"],
            "observation_id": row["observation_id"],
            "actual": species[y].name,
            "predicted": species[top[0]].name,
            "correct": int(top[0] == y),
            "actual_venomous": int(species[y].venomous),
            "predicted_venomous": int(species[top[0]].venomous),
            "verdict": verdict[i],
            "cause": str(ev.causes[i]),
            "venomous_probability": round(float(pv), 6),
            "possibly_venomous": int(verdict[i] != HARMLESS),
            "unknown_score": round(float(ev.unknown_scores[i]), 6),
            "unknown": int(unknown[i]),
        }
        for j, c in enumerate(top, 1):
            rec[f"top{j}"] = species[c].name
            rec[f"top{j}_prob"] = round(float(p[c]), 6)
        out.append(rec)
    return out


def tradeoff_rows(
    ev: Evaluation, species: Sequence[Species], threshold: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The venomous rule's trade-off on the test photos, and its point at the model's
    `threshold` (fitted on held-out photos, not these)."""
    venomous = np.array([s.venomous for s in species])
    p, is_v = venomous_probability(ev.probs, venomous), venomous[ev.labels]
    return venomous_tradeoff(p, is_v), tradeoff_point(p, is_v, threshold)
