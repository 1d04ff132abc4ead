"""Open-set ("unknown species") scores compared on real photos by holding whole species out.

    python bench/openset.py --data ../shared/realdata/ph-snakes-dev --out bench/openset.json
    python bench/openset.py --fast --out /tmp/openset-fast.json   # tiny synthetic smoke run

Protocol:

* Photos, labels, observation groups and the pooled Lite0+Lite1+Lite2 features (V views, view 0
  the eval transform) come from bench/_realdata.py, the loading code cv.py uses, and cv.py's
  feature cache (`<cv work>/real/pooled_v<V>.npy`); they are computed when missing.
* Rotations: the species are dealt into `--rotations` disjoint held-out sets (venomous species
  first, so that each set holds at least one), covering every species once; `--partitions`
  deals them again with another shuffle, so that each species is held out with other company.
  A rotation's held-out species are the "unknown" ones: none of their photos is seen by any fit.
* Within a rotation, grouped (by observation) stratified k-fold over the known species' photos
  (`snakeid.model.probe.grouped_folds`). On the training folds: the probe (`fit_probe`, `--views`
  views, C = `--c`), as train_head refits it, and every score's statistics (view 0 features).
  The threshold of each score and the temperature + venomous threshold of the "possibly venomous"
  rule are fitted on out-of-fold values of the training folds (an inner grouped k-fold, the
  refit protocol of train_head): never on the test fold.
* Evaluated on the held-out known fold (known) and on every photo of the held-out species
  (unknown): AUROC, share of known photos flagged at the threshold (95 % of known val photos
  pass), share of unknown photos flagged, the dangerous case (an unknown venomous photo whose
  top-1 is a known harmless species and which is not flagged unknown), and the share of unknown
  venomous photos caught by "flagged unknown OR possibly venomous".
* Means and sds over rotations (of each rotation's mean over folds), and sds over all folds.
* `--adapt BACKBONE...`: as the pipeline runs it. `train_head` adapts trunks on its train photos
  and calibrates on its val photos alone; here one inner fold of each outer fold's training
  photos plays val (`CALIBRATION_FOLD`). Those trunks are fine-tuned end to end on the other
  inner folds by the pipeline's own `snakeid.train.adapt`, and their columns of the features
  replaced (every photo, every view, the same augmentation seeds); the probe still fits on every
  training photo, but the temperature, the venomous threshold and every score's threshold (and
  standardisation) are fitted on that fold's out-of-fold values only: never on a photo an
  adapted trunk trained on. Cached per fold under `--work`, so an interrupted run resumes.
  `--outer-folds K` evaluates only the first K outer folds of each rotation (a partial run).
* The deployed score's safety trade-off: the same rates with the unknown threshold and the
  venomous rule set for each (`known_pass_rate`, venomous rule) of a small grid: the
  pipeline's cost ratios (`venomous_cost_ratio`), and the miss targets of the rule before.

Probe outputs (per-photo logits) are cached under `--work` (/tmp), never in the repository;
the JSON and markdown hold aggregate numbers only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import _realdata  # noqa: E402  (the verified rows and the feature pass, as cv.py)
from _openset_scores import Energy, Mahalanobis  # noqa: E402
from _realdata import (  # noqa: E402
    CALIBRATION_FOLD,
    COST_RATIOS,
    miss_target_threshold,
)
from snakeid.config import to_dict  # noqa: E402
from snakeid.model.calibration import (  # noqa: E402
    bayes_threshold,
    calibrate_on_val,
    softmax,
    venomous_probability,
)
from snakeid.model.decision import (  # noqa: E402
    HARMLESS,
    causes,
    flagged_unknown,
    venomous_or_unknown,
    verdicts,
)
from snakeid.model.metrics import macro_f1  # noqa: E402
from snakeid.model.openset import (  # noqa: E402
    Combined,
    MaxSoftmax,
    NearestNeighbour,
    OpenSetScore,
    UnknownScore,
    fit_threshold,
    open_set_rates,
    size_mb,
)
from snakeid.model.probe import fit_probe, grouped_folds, out_of_fold_logits, stack_views  # noqa: E402
from snakeid.taxa import Species  # noqa: E402
from snakeid.train.config import AdaptConfig, FinetuneConfig  # noqa: E402
from snakeid.utils import write_json  # noqa: E402

_logger = logging.getLogger("openset")

# name → fit(view-0 features of the known training photos (N, D), their labels (N,))
CANDIDATES: dict[str, Callable[[np.ndarray, np.ndarray], OpenSetScore]] = {
    "msp": lambda x, y: MaxSoftmax(),
    "msp_t4": lambda x, y: MaxSoftmax(4.0),  # the probe's raw logits / 4
    "energy": lambda x, y: Energy(),
    "mahalanobis": lambda x, y: Mahalanobis.fit(x, y),
    "mahalanobis_l2": lambda x, y: Mahalanobis.fit(x, y, l2=True),
    "relative_mahalanobis_l2": lambda x, y: Mahalanobis.fit(x, y, l2=True, relative=True),
    # L2-normalised, the covariances (Ledoit-Wolf shrunk) kept to their leading r directions,
    # the rest sharing one variance (probabilistic PCA): relative Mahalanobis in a PCA space
    "relative_mahalanobis_l2_pca64": lambda x, y: Mahalanobis.fit(
        x, y, l2=True, relative=True, rank=64
    ),
    "relative_mahalanobis_l2_pca256": lambda x, y: Mahalanobis.fit(
        x, y, l2=True, relative=True, rank=256
    ),
    "knn1": lambda x, y: NearestNeighbour.fit(x, k=1),
    "knn1_sqrt": lambda x, y: NearestNeighbour.fit(x, k=1, power=0.5),
    "knn5": lambda x, y: NearestNeighbour.fit(x, k=5),
    "centroid": lambda x, y: NearestNeighbour.fit_centroids(x, y),
}
# name → (the candidates it sums, centred per top-1 class): `Combined`, fitted on out-of-fold
# values of its parts
COMBINED: dict[str, tuple[tuple[str, ...], bool]] = {
    "msp+knn1": (("msp", "knn1"), False),
    "msp+knn1_per_class": (("msp", "knn1"), True),
    "msp_t4+knn1_sqrt_per_class": (("msp_t4", "knn1_sqrt"), True),
}
# name → the candidates whose ranks it averages: each part's values mapped to their empirical
# distribution on the out-of-fold calibration photos, then averaged (rank fusion)
RANK_FUSED: dict[str, tuple[str, ...]] = {
    "rank(msp_t4,knn1_sqrt)": ("msp_t4", "knn1_sqrt"),
    "rank(msp_t4,knn1_sqrt,rel_maha_pca64)": (
        "msp_t4",
        "knn1_sqrt",
        "relative_mahalanobis_l2_pca64",
    ),
}
# name → the candidate whose threshold it fits per top-1 class (each class's own pass-rate
# quantile of its out-of-fold calibration values; the overall one for a class predicted for
# fewer than PER_CLASS_MIN_PHOTOS of them): as a score, the value minus its class's threshold
PER_CLASS_THRESHOLDS: dict[str, str] = {
    "msp_t4+knn1_sqrt_per_class_thresholds": "msp_t4+knn1_sqrt_per_class",
}
PER_CLASS_MIN_PHOTOS = 10
DEPLOYED = "deployed"  # `snakeid.model.openset.UnknownScore`, what the pipeline exports
DEPLOYED_VIEW0 = "deployed_view0_bank"  # the same, its bank rows view 0 alone (the ablation)
# what the venomous rule alone gives (nothing flagged unknown)
NO_SCORE_METRICS = ("dangerous_rate", "unknown_venomous_caught_rate", "known_harmless_alerted_rate")
# the deployed score's safety trade-off: finetune.known_pass_rate x the venomous rule (each row
# refitted on the training folds as finetune fits it)
TRADE_OFF_PASS_RATES = (0.95, 0.90, 0.80)
TRADE_OFF_MISS_TARGETS = (0.02, 0.01, 0.005, 0.0)
# the venomous rule's two kinds, (name, value): the pipeline's cost ratio k (warn at calibrated
# P(venomous) >= 1 / (1 + k)), and the miss target of the rule it replaced
TRADE_OFF_RULES = tuple(("venomous_cost_ratio", k) for k in COST_RATIOS) + tuple(
    ("venomous_miss_target", m) for m in TRADE_OFF_MISS_TARGETS
)
FEATURE_SEED = 42  # the augmented views' seeds (every trunk's views are the same crops)


@dataclass
class Photos:
    """Every photo of the set: features (V, N, D), labels (N,), observation groups, species, and
    the clean manifest rows (real photos only: what `--adapt` trains on)."""

    x: np.ndarray
    y: np.ndarray
    groups: list[str]
    species: list[Species]
    rows: list[dict] | None = None

    @property
    def venomous(self) -> np.ndarray:
        return np.array([s.venomous for s in self.species])


# ---------------------------------------------------------------------------------------------
# Data


def real_photos(data: Path, species_file: Path | None, cv_work: Path, views: int) -> Photos:
    """bench/cv.py's photos and cached pooled features (the same loading code, so the rows line up
    with its cache)."""
    from snakeid.config import load_params
    from snakeid.data.dataset import DataConfig
    from snakeid.data.split import observation_key
    from snakeid.model.models import ModelConfig, build_model, trunk_sizes
    from snakeid.taxa import load_species

    species = load_species(species_file or data / "species.yaml")
    work = cv_work / "real"
    work.mkdir(parents=True, exist_ok=True)
    rows = _realdata.clean_rows(data, work, species, load_params(REPO / "params.yaml"))
    ensemble = build_model(_realdata.ENSEMBLE, len(species), ModelConfig())
    pooled, _ = _realdata.features(
        ensemble.prefix(ensemble.depth), rows, species, DataConfig(views=views, batch_size=32),
        size=max(trunk_sizes(_realdata.ENSEMBLE, None)), seed=FEATURE_SEED,
        path=work / f"pooled_v{views}.npy",
    )  # fmt: skip
    index = {s.name: i for i, s in enumerate(species)}
    return Photos(
        x=pooled,
        y=np.array([index[r["taxon"]] for r in rows]),
        groups=[observation_key(r) for r in rows],
        species=species,
        rows=rows,
    )


def adapted(
    photos: Photos, held: np.ndarray, train: np.ndarray, adapt: AdaptConfig, s: Settings,
    work: Path,
) -> Photos:  # fmt: skip
    """`photos` with the adapted trunks' columns (`_realdata.adapted`): adapted on the known
    `train` photos (an outer fold's training photos outside `CALIBRATION_FOLD`)."""
    from snakeid.data.dataset import DataConfig

    assert photos.rows is not None, "adaptation trains on photos: real data only"
    known = [sp for i, sp in enumerate(photos.species) if i not in held]
    x = _realdata.adapted(
        photos.x, photos.rows, photos.species, known, train, adapt,
        DataConfig(views=s.views, batch_size=32), seed=FEATURE_SEED, work=work,
    )  # fmt: skip
    return Photos(x, photos.y, photos.groups, photos.species, photos.rows)


def synthetic_photos(seed: int, n_species: int = 8, per_species: int = 24, dim: int = 24):
    """Gaussian clusters of positive "pooled features", 2 views, a third of the species venomous."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 3, (n_species, dim)) * rng.integers(0, 2, (n_species, dim))
    y = np.repeat(np.arange(n_species), per_species)
    x = np.abs(centres[y] + rng.normal(0, 0.7, (2, len(y), dim))).astype(np.float16)
    species = [Species(f"Synthetic {chr(97 + i)}", f"S{i}", i % 3 == 0) for i in range(n_species)]
    return Photos(x, y, [f"photo:{i}" for i in range(len(y))], species)


def rotations(venomous: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """`n` disjoint held-out sets of species indices covering every species: the venomous ones
    are dealt first, so each set holds one when there are at least `n`; a set left without one
    borrows a random venomous species."""
    rng = np.random.default_rng(seed)
    v, h = np.flatnonzero(venomous), np.flatnonzero(~venomous)
    order = np.r_[rng.permutation(v), rng.permutation(h)]
    sets = [np.sort(order[i::n]) for i in range(n)]
    return [
        s if venomous[s].any() or not len(v) else np.sort(np.r_[s, rng.choice(v)]) for s in sets
    ]


# ---------------------------------------------------------------------------------------------
# One rotation, one fold


def known_labels(photos: Photos, held: np.ndarray) -> np.ndarray:
    """Each photo's label among the known species (meaningless for the held-out species')."""
    return np.cumsum(~np.isin(np.arange(len(photos.species)), held))[photos.y] - 1


def inner_folds(photos: Photos, held: np.ndarray, train: np.ndarray, s: Settings) -> np.ndarray:
    """The inner grouped folds of the `train` photos: the probe's out-of-fold logits, the
    scores' out-of-fold values and, with --adapt, the calibration fold all use them."""
    y = known_labels(photos, held)[train]
    return grouped_folds(y, [photos.groups[i] for i in train], s.folds, s.seed)


@dataclass(frozen=True)
class Settings:
    folds: int
    views: int
    c: float
    seed: int
    pass_rate: float
    cost_ratio: float  # the pipeline's venomous rule (finetune.venomous_cost_ratio)


def probe_outputs(
    photos: Photos, held: np.ndarray, fold: int, train: np.ndarray, evaluated: np.ndarray,
    y_known: np.ndarray, s: Settings, cache: Path,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Logits of the probe refitted on `train` for the `evaluated` photos, and out-of-fold logits
    of the training photos (inner grouped k-fold), cached in `cache` (the slow part: probe fits)."""
    key = json.dumps([[photos.species[i].name for i in held], fold, s.folds, s.views, s.c,
                      s.seed, len(photos.y)])  # fmt: skip
    path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as z:
            return dict(z)
    n_known = int(y_known.max()) + 1
    xt, yt = np.asarray(photos.x[: s.views, train], np.float32), y_known[train]
    probe = fit_probe(stack_views(xt), np.tile(yt, len(xt)), n_known, c=s.c)
    out = {
        "logits": probe.logits(np.asarray(photos.x[0, evaluated], np.float32)),
        "oof": out_of_fold_logits(xt, yt, inner_folds(photos, held, train, s), n_known, c=s.c,
                                  balanced=False),
    }  # fmt: skip
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


@dataclass(frozen=True)
class Decisions:
    """What the classifier and the venomous rule say of the evaluated photos: the known test
    photos first (`n_test`), then every photo of the unknown species."""

    n_test: int
    venomous_threshold: float  # the venomous rule fires at P(venomous) >= this
    known_harmless: np.ndarray  # (n_test,) the known photo's true species is harmless
    unknown_venomous: np.ndarray  # (M - n_test,) the unknown photo's species is venomous
    probs: np.ndarray  # (M, C) calibrated class probabilities
    venomous: np.ndarray  # (C,) the known species' venom flags
    low_confidence_threshold: float  # `finetune.low_confidence_threshold`

    @property
    def top1_harmless(self) -> np.ndarray:
        """(M,) the top-1 species is harmless."""
        return ~self.venomous[self.probs.argmax(1)]

    @property
    def p_venomous(self) -> np.ndarray:
        """(M,) P(any venomous species), calibrated."""
        return venomous_probability(self.probs, self.venomous)

    def report(self, scores: np.ndarray, threshold: float) -> dict[str, float]:
        """`evaluate`'s open-set rates, the known harmless photos alerted (flagged unknown OR
        possibly venomous), and the shares of each kind of photo told harmless by the verdict
        `snakeid predict` gives (`snakeid.model.decision`: no warning of any kind)."""
        n = self.n_test
        told = verdicts(
            causes(self.probs, self.venomous, flagged_unknown(scores, threshold),
                   venomous_threshold=self.venomous_threshold,
                   low_confidence_threshold=self.low_confidence_threshold)
        )  # fmt: skip
        passed = told == HARMLESS
        no_warning = {
            "known_harmless_no_warning_rate": float(passed[:n][self.known_harmless].mean()),
            "known_venomous_no_warning_rate": float(passed[:n][~self.known_harmless].mean()),
            "unknown_venomous_no_warning_rate": float(passed[n:][self.unknown_venomous].mean()),
        }
        rates = open_set_rates(
            scores[:n], scores[n:], threshold, top1_harmless=self.top1_harmless[n:],
            p_venomous=self.p_venomous[n:], venomous_threshold=self.venomous_threshold,
            venomous=self.unknown_venomous,
        )  # fmt: skip
        alert = venomous_or_unknown(
            self.p_venomous[:n], self.venomous_threshold, flagged_unknown(scores[:n], threshold)
        )
        alerted = {"known_harmless_alerted_rate": float(alert[self.known_harmless].mean())}
        return rates | alerted | no_warning

    def without_openset(self) -> dict[str, float]:
        """The same rates when nothing is ever flagged unknown."""
        r = self.report(np.zeros(len(self.top1_harmless)), 0.0)
        return {k: r[k] for k in NO_SCORE_METRICS}


def score_values(
    x_train: np.ndarray, y_train: np.ndarray, inner: np.ndarray, oof: np.ndarray,
    x_eval: np.ndarray, logits: np.ndarray, calibrate: np.ndarray, pass_rate: float,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Every candidate's (out-of-fold values on the `calibrate` training photos, values on the
    evaluated photos): statistics fitted on the inner training folds, then on all training
    photos."""
    out = {}
    for name, fit in CANDIDATES.items():
        held = np.empty(len(y_train))
        for f in range(inner.max() + 1):
            score = fit(x_train[inner != f], y_train[inner != f])
            held[inner == f] = score.score(x_train[inner == f], oof[inner == f])
        out[name] = held[calibrate], fit(x_train, y_train).score(x_eval, logits)
    for name, (parts, per_class) in COMBINED.items():
        # the parts' own out-of-fold values fit the standardisation, as they fit the threshold
        held, evaluated = (np.stack([out[p][i] for p in parts]) for i in (0, 1))
        cal_logits = oof[calibrate]
        combined = Combined.fit((), held, cal_logits, per_class=per_class)  # parts applied
        out[name] = combined.combine(held, cal_logits), combined.combine(evaluated, logits)
    for name, parts in RANK_FUSED.items():
        cdfs = [np.sort(out[p][0]) for p in parts]

        def fused(i: int, cdfs: list[np.ndarray] = cdfs, parts: tuple[str, ...] = parts):
            return np.mean(
                [np.searchsorted(c, out[p][i], side="right") / len(c)
                 for c, p in zip(cdfs, parts, strict=True)], 0,
            )  # fmt: skip

        out[name] = fused(0), fused(1)
    for name, part in PER_CLASS_THRESHOLDS.items():
        held, evaluated = out[part]
        top_held, top_eval = oof[calibrate].argmax(1), logits.argmax(1)
        overall = fit_threshold(held, pass_rate)
        per_class = np.array([
            fit_threshold(held[top_held == c], pass_rate)
            if (top_held == c).sum() >= PER_CLASS_MIN_PHOTOS else overall
            for c in range(logits.shape[1])
        ])  # fmt: skip
        out[name] = held - per_class[top_held], evaluated - per_class[top_eval]
    return out


def evaluate_fold(
    photos: Photos, held: np.ndarray, fold_of: np.ndarray, fold: int, s: Settings, cache: Path,
    *, adapted: bool,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:  # fmt: skip
    """Every candidate's metrics for one (rotation, fold), {candidate: {metric: value}}, and the
    deployed score's at each setting of the trade-off grid, {setting: {metric: value}}.
    `adapted`: the features' adapted trunks trained on the training photos outside
    `CALIBRATION_FOLD`, so only that fold calibrates."""
    is_unknown = np.isin(photos.y, held)
    known_species = [sp for i, sp in enumerate(photos.species) if i not in held]
    y_known = known_labels(photos, held)
    known, unknown = np.flatnonzero(~is_unknown), np.flatnonzero(is_unknown)
    train, test = known[fold_of != fold], known[fold_of == fold]
    evaluated = np.r_[test, unknown]
    out = probe_outputs(photos, held, fold, train, evaluated, y_known, s, cache)
    # the inner folds of out_of_fold_logits (the same call) give out-of-fold score values
    inner = inner_folds(photos, held, train, s)
    cal = inner == CALIBRATION_FOLD if adapted else np.ones(len(train), bool)
    logits, oof = out["logits"], out["oof"]

    venomous = np.array([sp.venomous for sp in known_species])

    # calibrated as `finetune` calibrates: the temperature, the pipeline's venomous rule
    fitted = calibrate_on_val(oof[cal], y_known[train][cal], known_species,
                              temperature_scaling=True, cost_ratio=s.cost_ratio,
                              low_confidence=FinetuneConfig().low_confidence_threshold)  # fmt: skip
    t = fitted["temperature"]
    decisions = Decisions(
        n_test=len(test),
        venomous_threshold=fitted["venomous_threshold"],
        known_harmless=~venomous[y_known[test]],
        unknown_venomous=photos.venomous[photos.y[unknown]],
        probs=softmax(logits, t),
        venomous=venomous,
        low_confidence_threshold=FinetuneConfig().low_confidence_threshold,
    )
    cal_pv = venomous_probability(softmax(oof[cal], t), venomous)

    def venomous_threshold(rule: str, value: float) -> float:
        """The trade-off grid's rules: a cost ratio, or the miss target the rule before used."""
        if rule == "venomous_cost_ratio":
            return bayes_threshold(value)
        return miss_target_threshold(cal_pv, venomous[y_known[train][cal]], value)

    values = score_values(
        np.asarray(photos.x[0, train], np.float32), y_known[train], inner, oof,
        np.asarray(photos.x[0, evaluated], np.float32), logits, cal, s.pass_rate,
    )  # fmt: skip
    result = {
        name: decisions.report(scores, fit_threshold(held_out, s.pass_rate))
        for name, (held_out, scores) in values.items()
    }
    # the pipeline's own score, fitted as `finetune` fits it: on the calibrated out-of-fold
    # logits of the calibrating training photos and their inner folds, the bank every training
    # photo (every cached view of it)
    views = np.asarray(photos.x[:, train], np.float32)
    x_eval = np.asarray(photos.x[0, evaluated], np.float32)

    def deployed(bank: np.ndarray, pass_rate: float) -> tuple[np.ndarray, float]:
        score = UnknownScore.fit(bank, views[0, cal], oof[cal] / t, bank_folds=inner,
                                 held_folds=inner[cal], known_pass_rate=pass_rate)  # fmt: skip
        return score.score(x_eval, logits / t), score.threshold

    fitted = {p: deployed(views, p) for p in dict.fromkeys((s.pass_rate, *TRADE_OFF_PASS_RATES))}
    result[DEPLOYED] = decisions.report(*fitted[s.pass_rate])
    result[DEPLOYED_VIEW0] = decisions.report(*deployed(views[:1], s.pass_rate))
    trade_off = {}
    for rule, value in TRADE_OFF_RULES:
        at_rule = replace(decisions, venomous_threshold=venomous_threshold(rule, value))
        for p in TRADE_OFF_PASS_RATES:
            trade_off[trade_off_key(p, rule, value)] = at_rule.report(*fitted[p])
    # the classifier itself on the known test photos (its classes present there)
    pred, truth = logits[: len(test)].argmax(1), y_known[test]
    classifier = {
        "known_accuracy": float((pred == truth).mean()),
        "known_macro_f1": macro_f1(truth, pred, np.unique(truth)),
    }
    return result | {"none": decisions.without_openset() | classifier}, trade_off


def trade_off_key(pass_rate: float, rule: str, value: float) -> str:
    return f"known_pass_rate={pass_rate:g} {rule}={value:g}"


# ---------------------------------------------------------------------------------------------
# The comparison


def summarise(runs: list[list[dict[str, dict[str, float]]]]) -> dict[str, Any]:
    """runs[rotation][fold][candidate][metric] → per candidate: mean and sd over rotations (of
    each rotation's fold mean), sd over every (rotation, fold), per-rotation means."""
    out = {}
    for name in runs[0][0]:
        metrics = runs[0][0][name]
        per_rot = {m: [float(np.mean([f[name][m] for f in rot])) for rot in runs] for m in metrics}
        every = {m: [f[name][m] for rot in runs for f in rot] for m in metrics}
        out[name] = {
            "mean": {m: float(np.mean(v)) for m, v in per_rot.items()},
            "sd_rotations": {m: float(np.std(v, ddof=1)) for m, v in per_rot.items()},
            "sd_folds": {m: float(np.std(v, ddof=1)) for m, v in every.items()},
            "per_rotation": per_rot,
        }
    return out


def recommend(candidates: dict[str, Any], tolerance: float = 0.01) -> str:
    """The best mean AUROC among scores that flag ≤ 10 % of known photos; within `tolerance` of
    it, the one with the smallest constants (it is embedded in the exported model)."""
    ok = {n: c for n, c in candidates.items() if c["mean"]["known_flagged_rate"] <= 0.10}
    ok = ok or candidates
    best = max(c["mean"]["auroc"] for c in ok.values())
    close = [n for n, c in ok.items() if c["mean"]["auroc"] >= best - tolerance]
    return min(close, key=lambda n: (ok[n]["size_mb"], -ok[n]["mean"]["auroc"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="folder of photos: {train,val}/<species>/")
    ap.add_argument("--species", type=Path, help="species file (default: <data>/species.yaml)")
    ap.add_argument("--rotations", type=int, default=4, help="disjoint held-out species sets")
    ap.add_argument("--partitions", type=int, default=2, help="deals of the species into them")
    ap.add_argument("--folds", type=int, default=5, help="outer and inner grouped folds")
    ap.add_argument("--views", type=int, default=4, help="cached views the probe trains on")
    ap.add_argument("--c", type=float, default=0.1, help="probe: inverse L2 strength")
    ap.add_argument("--pass-rate", type=float, default=0.95, help="known val photos not flagged")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--cv-work", type=Path, default=Path(tempfile.gettempdir()) / "snakeid-cv",
                    help="bench/cv.py's work dir (its feature cache)")  # fmt: skip
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "snakeid-openset",
                    help="cache of probe logits")  # fmt: skip
    ap.add_argument("--out", type=Path, required=True, help="results JSON (markdown beside it)")
    # with 2 BLAS threads on a busy 2-core machine, LAPACK ran 40x slower than with 1
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads")
    ap.add_argument("--fast", action="store_true", help="tiny synthetic data (smoke test)")
    ap.add_argument(
        "--adapt",
        nargs="+",
        default=[],
        metavar="BACKBONE",
        help="adapt these trunks per fold as train_head does (adapt.backbones)",
    )
    ap.add_argument("--adapt-epochs", type=int, default=AdaptConfig.epochs)
    ap.add_argument(
        "--outer-folds",
        type=int,
        help="evaluate only the first K outer folds of each rotation (a partial run)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    threadpool_limits(args.threads)  # for the whole run

    from snakeid.config import load_params, section

    finetune = section(load_params(REPO / "params.yaml"), "finetune", FinetuneConfig)
    if args.fast and args.adapt:
        ap.error("--adapt trains trunks on photos: it needs --data, not --fast")
    if args.fast:
        photos = synthetic_photos(args.seed)
        args.folds, args.views, args.rotations = 3, 2, 2
    else:
        photos = real_photos(args.data, args.species, args.cv_work, args.views)
    s = Settings(args.folds, args.views, args.c, args.seed, args.pass_rate,
                 finetune.venomous_cost_ratio)  # fmt: skip
    cache = args.work / ("fast" if args.fast else "real")
    adapt = AdaptConfig(backbones=tuple(args.adapt), epochs=args.adapt_epochs)
    if adapt.backbones:  # per-fold features: their own probe outputs
        key = f"{to_dict(adapt)} adapted outside calibration fold {CALIBRATION_FOLD}"
        cache = cache / f"adapt-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    outer_folds = min(args.outer_folds or s.folds, s.folds)

    held_sets = [
        h
        for p in range(args.partitions)
        for h in rotations(photos.venomous, args.rotations, args.seed + p)
    ]
    runs, trade_offs = [], []
    for r, held in enumerate(held_sets):
        names = [photos.species[i].name for i in held]
        _logger.info("rotation %d: unknown %s", r, ", ".join(names))
        known = ~np.isin(photos.y, held)
        fold_of = grouped_folds(
            photos.y[known], [g for g, k in zip(photos.groups, known, strict=True) if k],
            s.folds, s.seed,
        )  # fmt: skip
        runs.append([])
        trade_offs.append([])
        for f in range(outer_folds):
            started = time.perf_counter()
            fold_photos = photos
            if adapt.backbones:  # on the training photos outside the calibration fold
                train = np.flatnonzero(known)[fold_of != f]
                train = train[inner_folds(photos, held, train, s) != CALIBRATION_FOLD]
                fold_photos = adapted(photos, held, train, adapt, s, args.work / "adapted")
            fold_result, fold_trade_off = evaluate_fold(
                fold_photos, held, fold_of, f, s, cache, adapted=bool(adapt.backbones)
            )
            runs[-1].append(fold_result)
            trade_offs[-1].append(fold_trade_off)
            _logger.info("rotation %d fold %d (%.0f s): AUROC %s", r, f,
                         time.perf_counter() - started,
                         ", ".join(f"{n} {m['auroc']:.3f}" for n, m in runs[-1][-1].items()
                                   if "auroc" in m))  # fmt: skip

    candidates, trade_off = summarise(runs), summarise(trade_offs)  # over rotations
    baseline = candidates.pop("none")
    x0 = np.asarray(photos.x[0], np.float32)  # the constants' size when fitted on every photo
    full = {name: fit(x0, photos.y) for name, fit in CANDIDATES.items()}
    for name, (parts, _) in COMBINED.items():
        shape = (len(parts), len(photos.species))
        full[name] = Combined(tuple(full[p] for p in parts), np.zeros(shape), np.zeros(len(parts)))
    folds = np.arange(len(photos.y)) % s.folds  # any folds: only the constants' size is used
    logits0 = np.zeros((len(photos.y), len(photos.species)))
    full[DEPLOYED] = UnknownScore.fit(x0[None], x0, logits0, bank_folds=folds, held_folds=folds,
                                      known_pass_rate=s.pass_rate).combined  # fmt: skip
    full[DEPLOYED_VIEW0] = full[DEPLOYED]  # the same arrays
    for name, score in full.items():
        candidates[name]["size_mb"] = round(size_mb(score), 3)
    for name, part in PER_CLASS_THRESHOLDS.items():  # its part and one threshold per class
        candidates[name]["size_mb"] = round(
            candidates[part]["size_mb"] + len(photos.species) * 4 / 1e6, 3
        )
    for name, parts in RANK_FUSED.items():  # its parts, and each one's sorted calibration values
        calibration = len(photos.y) * len(parts) * 4 / 1e6
        candidates[name]["size_mb"] = round(
            sum(candidates[p]["size_mb"] for p in parts) + calibration, 3
        )
    result = {
        "meta": {
            "photos": len(photos.y),
            "species": len(photos.species),
            "feature_dim": int(photos.x.shape[-1]),
            "partitions": args.partitions,
            "rotations_per_partition": args.rotations,
            "folds": s.folds,
            "outer_folds_evaluated": outer_folds,
            "adapt": to_dict(adapt) if adapt.backbones else None,
            "views": s.views,
            "probe_c": s.c,
            "pass_rate": s.pass_rate,
            "venomous_cost_ratio": s.cost_ratio,
            "seed": s.seed,
            "fast": args.fast,
            "command": " ".join(["python", "bench/openset.py", *sys.argv[1:]]),
        },
        "rotations": [
            {
                "unknown": [photos.species[i].name for i in h],
                "unknown_venomous": [photos.species[i].name for i in h if photos.venomous[i]],
            }
            for h in held_sets
        ],  # fmt: skip
        "baseline_no_openset": baseline,
        "candidates": candidates,
        "recommended": recommend(candidates),
        "deployed_trade_off": {
            trade_off_key(p, rule, v): {"known_pass_rate": p, rule: v}
            | trade_off[trade_off_key(p, rule, v)]
            for rule, v in TRADE_OFF_RULES
            for p in TRADE_OFF_PASS_RATES
        },
    }
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(markdown(result))


# ---------------------------------------------------------------------------------------------
# Report


def _pct(c: dict[str, Any], m: str) -> str:
    return f"{100 * c['mean'][m]:.1f} ± {100 * c['sd_rotations'][m]:.1f} %"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def trade_off_lines(trade_off: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"The `{DEPLOYED}` score's safety trade-off: each row refits the unknown threshold "
        "(`finetune.known_pass_rate`) and sets the venomous rule as `finetune` does: a cost "
        "ratio k warns at calibrated P(venomous) ≥ 1 / (1 + k), so `dvc exp run -S "
        "finetune.venomous_cost_ratio=...` picks a row (the default in bold). The miss-target "
        "rows are the rule before it (the threshold at which at most that share of the "
        "calibration photos' venomous ones fall below). Mean over rotations; the lowest "
        "rotation's caught share in brackets.",
        "",
        "",
        "The last three columns are `snakeid predict`'s verdict (`snakeid.model.decision`: "
        "warned when "
        "flagged unknown, a venomous top-1, low confidence or over the venomous threshold): the "
        "share of known harmless, known venomous and unknown venomous photos told *harmless*, "
        "i.e. given no warning of any kind.",
        "",
        "| venomous rule | known_pass_rate | known flagged | caught | alerted | dangerous "
        "| no warning: harmless | venomous | unknown venomous |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in trade_off.values():
        pass_rate = c["known_pass_rate"]
        rule, value = next((r, c[r]) for r, _ in TRADE_OFF_RULES if r in c)
        default = (pass_rate, rule, value) == (
            meta["pass_rate"], "venomous_cost_ratio", meta["venomous_cost_ratio"]
        )  # fmt: skip
        mean = c["mean"]
        lowest = min(c["per_rotation"]["unknown_venomous_caught_rate"])
        label = rule.removeprefix("venomous_").replace("_", " ")
        row = (
            f"{label} {value:g} | {pass_rate:g} | {100 * mean['known_flagged_rate']:.1f} % "
            f"| {100 * mean['unknown_venomous_caught_rate']:.1f} % ({100 * lowest:.0f} %) "
            f"| {100 * mean['known_harmless_alerted_rate']:.1f} % "
            f"| {100 * mean['dangerous_rate']:.1f} % "
            f"| {100 * mean['known_harmless_no_warning_rate']:.1f} ± "
            f"{100 * c['sd_rotations']['known_harmless_no_warning_rate']:.1f} % "
            f"| {100 * mean['known_venomous_no_warning_rate']:.1f} % "
            f"| {100 * mean['unknown_venomous_no_warning_rate']:.1f} %"
        )
        lines.append(f"| **{row.replace(' | ', '** | **')}** |" if default else f"| {row} |")
    return lines


def adapt_lines(meta: dict[str, Any]) -> list[str]:
    """What differs from the frozen-feature protocol: adapted trunks, a partial run."""
    lines = []
    if meta["adapt"]:
        a = meta["adapt"]
        lines.append(
            f"Adapted per outer fold, as `train_head` adapts them (`adapt`): "
            f"{', '.join(a['backbones'])}, {a['epochs']} epochs at peak lr {a['lr']:g}, fine-tuned "
            "end to end on that fold's training photos outside one inner fold; the other trunks "
            "frozen. As in the pipeline (train_head adapts on train and calibrates on val alone), "
            "only that inner fold's out-of-fold values fit the temperature, the venomous "
            "threshold and the unknown thresholds: never a photo an adapted trunk trained on."
        )
    if meta["outer_folds_evaluated"] < meta["folds"]:
        lines.append(
            f"**Partial run:** only the first {meta['outer_folds_evaluated']} of the "
            f"{meta['folds']} outer folds of each rotation were evaluated."
        )
    return [part for line in lines for part in ("", line)]


def markdown(result: dict[str, Any]) -> str:
    meta, cands = result["meta"], result["candidates"]
    lines = [
        "# Open-set scores: unknown species",
        "",
        f"{len(result['rotations'])} rotations holding whole species out ({meta['partitions']} "
        f"deals of the species into {meta['rotations_per_partition']} disjoint sets) x grouped "
        f"{meta['folds']}-fold CV over the known species' photos; {meta['photos']} photos of "
        f"{meta['species']} species, features {meta['feature_dim']}-d, probe C = "
        f"{meta['probe_c']} on {meta['views']} views; thresholds pass {100 * meta['pass_rate']:.0f}"
        " % of out-of-fold known photos of the training folds.",
        *adapt_lines(meta),
        "",
        f"    {meta['command']}",
        "",
        "Mean ± sd over rotations (sd over all rotation x fold runs in brackets). *Dangerous*: "
        "unknown venomous photos whose top-1 is a known harmless species and which are not "
        "flagged unknown. *Caught*: unknown venomous photos flagged unknown OR possibly venomous. "
        "*Alerted*: known harmless test photos flagged unknown OR possibly venomous.",
        "",
        "| score | AUROC | known flagged | unknown flagged | dangerous | caught | alerted "
        "| constants MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in sorted(cands.items(), key=lambda i: -i[1]["mean"]["auroc"]):
        lines.append(
            f"| {name} | {c['mean']['auroc']:.3f} ± {c['sd_rotations']['auroc']:.3f} "
            f"({c['sd_folds']['auroc']:.3f}) | {_pct(c, 'known_flagged_rate')} "
            f"| {_pct(c, 'unknown_flagged_rate')} | {_pct(c, 'dangerous_rate')} "
            f"| {_pct(c, 'unknown_venomous_caught_rate')} "
            f"| {_pct(c, 'known_harmless_alerted_rate')} "
            f"| {c['size_mb']:.2f} |"
        )
    b = result["baseline_no_openset"]
    lines.append(
        f"| *(no open-set score)* | — | — | — | {_pct(b, 'dangerous_rate')} "
        f"| {_pct(b, 'unknown_venomous_caught_rate')} "
        f"| {_pct(b, 'known_harmless_alerted_rate')} | — |"
    )
    lines += [
        "",
        f"The probe on the known species' test photos: accuracy {b['mean']['known_accuracy']:.3f} "
        f"± {b['sd_rotations']['known_accuracy']:.3f}, macro-F1 {b['mean']['known_macro_f1']:.3f}"
        f" ± {b['sd_rotations']['known_macro_f1']:.3f}.",
    ]
    lines += trade_off_lines(result["deployed_trade_off"], meta)
    lines += ["", "Held-out (unknown) species per rotation, venomous in bold:", ""]
    shown = ("msp", DEPLOYED)
    per_deal = meta["rotations_per_partition"]
    for i, r in enumerate(result["rotations"]):
        names = [f"**{n}**" if n in r["unknown_venomous"] else n for n in r["unknown"]]
        per = ", ".join(f"{n} {cands[n]['per_rotation']['auroc'][i]:.3f}" for n in shown)
        lines.append(f"{i + 1}. {', '.join(names)} (AUROC {per})")
    lines.append("")
    for p in range(meta["partitions"]):
        part = slice(p * per_deal, (p + 1) * per_deal)
        means = ", ".join(
            f"{n} {np.mean(cands[n]['per_rotation']['auroc'][part]):.3f}" for n in shown
        )
        lines.append(f"Deal {p + 1} (rotations {part.start + 1}-{part.stop}): mean AUROC {means}.")
    rec, dep = cands[result["recommended"]], cands[DEPLOYED]
    partial = meta["outer_folds_evaluated"] < meta["folds"]
    known_flagged = dep["mean"]["known_flagged_rate"]
    lines += [
        "",
        f"Recommended by the rule in `recommend` (best mean AUROC among scores flagging ≤ 10 % "
        f"of known photos; within 0.01 of it, the smallest constants): **{result['recommended']}**"
        f", AUROC {rec['mean']['auroc']:.3f} vs MSP {cands['msp']['mean']['auroc']:.3f}, "
        f"{rec['size_mb']:.2f} MB of float32 constants.",
        "",
        f"`{DEPLOYED}` is the score the pipeline exports (`snakeid.model.openset.UnknownScore`, "
        f"`{UnknownScore.NAME}`), fitted as `finetune` fits it: calibrated logits, and a bank "
        f"row is a training photo's pooled features averaged over its cached views "
        f"(`{DEPLOYED_VIEW0}`: view 0 alone, the eval transform, as every query). "
        + ("On this partial run, not the full protocol: " if partial else "")
        + f"Targets of issue 17 for it: mean AUROC ≥ 0.80: {_met(dep['mean']['auroc'] >= 0.80)} "
        f"({dep['mean']['auroc']:.3f}); ≤ 10 % of known photos flagged: "
        f"{_met(known_flagged <= 0.10)} ({100 * known_flagged:.1f} "
        f"%); better than MSP: {_met(dep['mean']['auroc'] > cands['msp']['mean']['auroc'])}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
