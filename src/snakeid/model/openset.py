"""Open-set scores: how unlikely a photo is to show one of the known species (higher = less likely).

Every score reads a photo's pooled backbone features `f` (N, D) and/or the probe's logits (N, C)
and returns (N,) float64. The deployed score, `UnknownScore`, is built from three pieces:

1. `MaxSoftmax`: 1 − max softmax(logits) (Hendrycks & Gimpel, 2017). No constants.
2. `NearestNeighbour`: 1 − cosine similarity to the k-th nearest training photo, on L2-normalised
   features (Sun et al., 2022); with the class means as the bank (k = 1), the cosine distance to
   the nearest class centroid.
3. `Combined`: a sum of standardised scores (e.g. MSP + k-NN), optionally centred per top-1
   class. Logit scores see what the probe learnt to tell species apart; feature distances see
   what it ignores. On real photos neither dominates: their errors differ from species to species.

The candidates it was chosen against (energy, Mahalanobis and relative Mahalanobis with
Ledoit-Wolf shrinkage, PCA) are research, not product: they live in bench/_openset_scores.py,
beside bench/openset.py which measures them all.

Fitted scores are frozen dataclasses of numpy arrays (plus static switches) because an export
will embed those arrays as constants of the ONNX graph: each score is a few matrix products, and
`size_mb` says how large its constants are.

The threshold is the score under which `pass_rate` of known (validation) photos fall: a photo
is flagged "unknown species" when its score is above it.

Measured on held-out Philippine species (bench/openset.md), the unknowns are near look-alikes
(a third Naja, a sister Tropidolaemus): MSP + 1-NN centred per top-1 class ranks best; the
Mahalanobis variants rank below MSP, their distances being dominated by photo conditions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn

from snakeid.errors import UserError
from snakeid.model.decision import flagged_unknown, venomous_or_unknown

if TYPE_CHECKING:
    from snakeid.model.checkpoint import Checkpoint


class OpenSetScore(Protocol):
    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray: ...


def size_mb(score: object) -> float:
    """Megabytes of a fitted score's arrays stored as float32 (what the ONNX graph embeds)."""
    total = 0.0
    for f in fields(score):  # type: ignore[arg-type]
        value = getattr(score, f.name)
        for v in value if isinstance(value, tuple) else (value,):  # `Combined.parts`
            if isinstance(v, np.ndarray):
                total += v.size * 4 / 1e6
            elif is_dataclass(v):  # a part (or a research score's `Precision`)
                total += size_mb(v)
    return total


# ---------------------------------------------------------------------------------------------
# Logit-based scores


def logsumexp(z: np.ndarray) -> np.ndarray:
    """log Σ_c exp(z_c) per row, without overflow."""
    m = z.max(1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]


@dataclass(frozen=True)
class MaxSoftmax:
    """1 − the largest softmax probability of logits / `temperature` (> 1: a softer softmax,
    whose top probability still varies where the calibrated one is already ~1)."""

    temperature: float = 1.0

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        z = logits.astype(np.float64) / self.temperature
        return 1.0 - np.exp(z.max(1) - logsumexp(z))  # max p = exp(max z − logsumexp z)


# ---------------------------------------------------------------------------------------------
# Feature-based scores


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _unit_rows(x: np.ndarray, power: float) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return l2_normalise(np.maximum(x, 0.0) ** power if power != 1.0 else x).astype(np.float32)


@dataclass(frozen=True)
class NearestNeighbour:
    """1 − cosine similarity to the k-th most similar row of `bank` (L2-normalised), on the
    features raised to `power` (0.5: square roots, which evens out the few large pooled
    activations that otherwise dominate the cosine; the features are ≥ 0)."""

    bank: np.ndarray  # (M, D) float32, unit rows
    k: int = 1
    power: float = 1.0

    @classmethod
    def fit(cls, features: np.ndarray, *, k: int = 1, power: float = 1.0) -> NearestNeighbour:
        return cls(_unit_rows(features, power), k, power)

    @classmethod
    def fit_centroids(cls, features: np.ndarray, labels: np.ndarray) -> NearestNeighbour:
        """The class means of the normalised features as the bank (nearest-centroid cosine)."""
        x = l2_normalise(features)
        return cls.fit(np.stack([x[labels == c].mean(0) for c in np.unique(labels)]), k=1)

    def score(self, features: np.ndarray, logits: np.ndarray, chunk: int = 1024) -> np.ndarray:
        x = _unit_rows(features, self.power)
        k = min(self.k, len(self.bank))
        out = np.empty(len(x))
        for i in range(0, len(x), chunk):  # (chunk, M) similarities at a time
            sim = x[i : i + chunk] @ self.bank.T
            out[i : i + chunk] = 1.0 - np.partition(sim, -k, axis=1)[:, -k]
        return out


@dataclass(frozen=True)
class Combined:
    """Sum of standardised scores: each part minus its mean on known photos, over its sd.

    With `per_class` fits, the mean is taken over the known photos with the same top-1 class: a
    species whose photos are always far from the others (or always predicted with low
    confidence) then does not look unknown for that alone. Fitted on validation (out-of-fold)
    values of the parts, as the threshold; the constants add (P, C) + P numbers to the parts'.
    """

    parts: tuple[OpenSetScore, ...]
    offset: np.ndarray  # (P, C) mean value of part p on known photos predicted as class c
    scale: np.ndarray  # (P,) sd of part p's centred values on known photos

    @classmethod
    def fit(
        cls,
        parts: tuple[OpenSetScore, ...],
        values: np.ndarray,
        logits: np.ndarray,
        *,
        per_class: bool = False,
        min_photos: int = 5,
    ) -> Combined:
        """`values` (P, N): each part's scores of N known validation photos, `logits` (N, C)
        theirs; a class predicted for fewer than `min_photos` of them gets the overall mean."""
        values = np.asarray(values, dtype=np.float64)
        top = logits.argmax(1)
        offset = np.repeat(values.mean(1, keepdims=True), logits.shape[1], axis=1)  # (P, C)
        if per_class:
            for c in range(logits.shape[1]):
                if (top == c).sum() >= min_photos:
                    offset[:, c] = values[:, top == c].mean(1)
        scale = (values - offset[:, top]).std(1) + 1e-12
        return cls(tuple(parts), offset, scale)

    def combine(self, values: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The combined score from the parts' `values` (P, N) and the logits (N, C)."""
        top = logits.argmax(1)
        return ((values - self.offset[:, top]) / self.scale[:, None]).sum(0)

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return self.combine(np.stack([p.score(features, logits) for p in self.parts]), logits)


# ---------------------------------------------------------------------------------------------
# Threshold and evaluation


def fit_threshold(known_scores: np.ndarray, pass_rate: float = 0.95) -> float:
    """Smallest threshold t with at least `pass_rate` of `known_scores` ≤ t (the flag,
    `decision.flagged_unknown`, is score > t)."""
    s = np.sort(np.asarray(known_scores, dtype=np.float64))
    if not 0.0 < pass_rate <= 1.0 or len(s) == 0:
        raise ValueError(f"need known scores and 0 < pass_rate ≤ 1, got {len(s)}, {pass_rate}")
    return float(s[int(np.ceil(pass_rate * len(s) - 1e-9)) - 1])


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of an unknown photo > score of a known one), ties counted half (Mann-Whitney U)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    both = np.concatenate([known, unknown])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # average rank (1-based) of each distinct value: ties share the mean of their ranks
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    n_k, n_u = len(known), len(unknown)
    u = ranks[n_k:].sum() - n_u * (n_u + 1) / 2.0
    return float(u / (n_k * n_u))


def open_set_rates(
    known_scores: np.ndarray,
    unknown_scores: np.ndarray,
    threshold: float,
    *,
    top1_harmless: np.ndarray,
    p_venomous: np.ndarray,
    venomous_threshold: float,
    venomous: np.ndarray,
) -> dict[str, float | None]:
    """How the unknown flag at `threshold` serves known photos (`known_scores`) and photos of
    species the model does not know (`unknown_scores`, with per photo: the top-1 is a harmless
    known species, P(venomous), the true species is venomous); `evaluate` and bench/openset.py
    report these.

    `dangerous_rate`: of the unknown venomous photos, the share whose top-1 is a known harmless
    species and which are not flagged unknown, i.e. what a user would read as "harmless".
    `unknown_venomous_caught_rate`: the share flagged unknown or over the venomous threshold
    (`decision.venomous_or_unknown`; the verdict warns on at least these). Rates without photos
    to judge them on are None.
    """
    known_flagged = float(flagged_unknown(known_scores, threshold).mean())
    if len(unknown_scores) == 0:
        judged = ("auroc", "unknown_flagged_rate", "dangerous_rate", "unknown_venomous_caught_rate")
        return dict.fromkeys(judged) | {"known_flagged_rate": known_flagged}
    flagged = flagged_unknown(unknown_scores, threshold)
    alert = venomous_or_unknown(p_venomous, venomous_threshold, flagged)
    venomous = np.asarray(venomous, dtype=bool)
    n_v = int(venomous.sum())
    return {
        "auroc": auroc(known_scores, unknown_scores),
        "known_flagged_rate": known_flagged,
        "unknown_flagged_rate": float(flagged.mean()),
        "dangerous_rate": float((venomous & top1_harmless & ~flagged).sum() / n_v) if n_v else None,
        "unknown_venomous_caught_rate": float((venomous & alert).sum() / n_v) if n_v else None,
    }


# ---------------------------------------------------------------------------------------------
# The deployed score: fitted by `finetune`, stored in the checkpoint, a module of the ONNX graph


@dataclass(frozen=True)
class UnknownScore:
    """The unknown-species score of the deployed model, chosen on real photos (bench/openset.md):
    `Combined` of a softened MSP (calibrated logits / `MSP_TEMPERATURE`) and the cosine
    distance of the square-rooted pooled features to the nearest training photo's (its mean
    over the cached views), each centred per top-1 class and scaled; flagged "unknown" above
    `threshold`.

    Fitted on photos the classifier did not train on (`fit`); `module` computes the same score
    from pooled features and calibrated logits inside the exported graph.
    """

    combined: Combined
    threshold: float
    known_pass_rate: float
    fit_report: dict

    NAME = "msp_t3+knn1_sqrt_per_class"
    MSP_TEMPERATURE = 3.0  # bench/openset.md: flat from 2.5 to 6.5 on calibrated logits
    KNN_POWER = 0.5

    @classmethod
    def fit(
        cls,
        bank_views: np.ndarray,
        held: np.ndarray,
        held_logits: np.ndarray,
        *,
        bank_folds: np.ndarray,
        held_folds: np.ndarray,
        known_pass_rate: float,
    ) -> UnknownScore:
        """`bank_views` (V, M, D): pooled features of every cached view of the training photos.
        A row of the deployed nearest-neighbour bank is a photo's mean over its views (view 0 the
        eval transform, the others augmented): that photo under the crops and colours training
        draws, not one crop of it (bench/openset.md). `held` (N, D) and `held_logits` (N, C,
        calibrated): photos (view 0) whose values the centring, scaling and threshold are
        fitted on, each compared only with bank photos of another fold (`bank_folds` (M,),
        `held_folds` (N,)): out-of-fold photos of a refitted probe (the bank is then the same
        photos), or val photos against a train bank."""
        bank = np.asarray(bank_views, np.float32).mean(0)
        msp = MaxSoftmax(cls.MSP_TEMPERATURE)
        values = np.zeros((2, len(held)))
        values[0] = msp.score(held, held_logits)
        for f in np.unique(held_folds):
            rows, others = held_folds == f, bank_folds != f
            knn = NearestNeighbour.fit(bank[others], power=cls.KNN_POWER)
            values[1, rows] = knn.score(held[rows], held_logits)
        parts = (msp, NearestNeighbour.fit(bank, power=cls.KNN_POWER))
        combined = Combined.fit(parts, values, held_logits, per_class=True)
        scores = combined.combine(values, held_logits)
        threshold = fit_threshold(scores, known_pass_rate)
        report = {
            "held_photos": int(len(held)),
            "bank_photos": int(len(bank)),
            "held_flagged_rate": float(flagged_unknown(scores, threshold).mean()),
            "constants_mb": round(size_mb(combined), 3),
        }
        return cls(combined, threshold, known_pass_rate, report)

    @property
    def bank(self) -> np.ndarray:
        return self.combined.parts[1].bank  # type: ignore[attr-defined]

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return self.combined.score(features, logits)

    def state(self) -> dict:
        """What the checkpoint stores (tensors and plain values: `torch.load(weights_only)`)."""
        return {
            "score": self.NAME,
            "threshold": self.threshold,
            "known_pass_rate": self.known_pass_rate,
            "arrays": {
                "bank": torch.from_numpy(np.ascontiguousarray(self.bank, np.float32)),
                "offset": torch.from_numpy(self.combined.offset.astype(np.float64)),
                "scale": torch.from_numpy(self.combined.scale.astype(np.float64)),
            },
            "fit": self.fit_report,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> UnknownScore:
        """The final model's score (`finetune` fits it; the head's checkpoint has none)."""
        if ckpt.openset is None:
            raise UserError(
                f"the {ckpt.stage} checkpoint has no unknown-species score: run finetune"
            )
        return cls.from_state(ckpt.openset)

    @classmethod
    def from_state(cls, state: dict) -> UnknownScore:
        if state["score"] != cls.NAME:
            raise ValueError(f"unknown-species score {state['score']!r}, expected {cls.NAME!r}")
        a = {k: v.numpy() for k, v in state["arrays"].items()}
        parts = (MaxSoftmax(cls.MSP_TEMPERATURE), NearestNeighbour(a["bank"], 1, cls.KNN_POWER))
        return cls(Combined(parts, a["offset"], a["scale"]), float(state["threshold"]),
                   float(state["known_pass_rate"]), dict(state["fit"]))  # fmt: skip

    def module(self) -> UnknownScoreModule:
        """The score as a torch module: (pooled features (N, D), calibrated logits (N, C)) →
        (N,), the same numbers as `score` to float32 precision."""
        return UnknownScoreModule(self)

    def describe(self) -> dict:
        """For model_meta.json: what the score is and what it carries."""
        return {
            "score": self.NAME,
            "definition": (
                "sum over parts p of (value_p - offset[p, top-1 class]) / scale[p]; parts: "
                f"1 - max softmax(logits / {self.MSP_TEMPERATURE:g}), and 1 - cosine "
                "similarity of the square-rooted pooled features to the nearest training "
                "photo's (its pooled features averaged over the cached views); higher = less "
                "likely a known species"
            ),
            "threshold": self.threshold,
            "known_pass_rate": self.known_pass_rate,
        } | self.fit_report


class UnknownScoreModule(nn.Module):
    """`UnknownScore` in torch, for the deployed model (`snakeid.model.deployed.DeployedModel`)."""

    def __init__(self, score: UnknownScore) -> None:
        super().__init__()
        c = score.combined
        self.temperature = score.MSP_TEMPERATURE
        bank_t = np.ascontiguousarray(score.bank.T, np.float32)
        self.register_buffer("bank_t", torch.from_numpy(bank_t))
        self.register_buffer("offset", torch.from_numpy(c.offset.astype(np.float32)))
        self.register_buffer("inv_scale", torch.from_numpy((1 / c.scale).astype(np.float32)))

    def forward(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        msp = 1.0 - torch.softmax(logits / self.temperature, 1).max(1).values
        root = z.clamp_min(0.0).sqrt()
        unit = root / root.norm(dim=1, keepdim=True).clamp_min(1e-12)
        knn = 1.0 - (unit @ self.bank_t).max(1).values
        top = logits.argmax(1)
        return (msp - self.offset[0][top]) * self.inv_scale[0] + (
            knn - self.offset[1][top]
        ) * self.inv_scale[1]
