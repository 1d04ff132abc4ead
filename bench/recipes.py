"""Recipe comparison on a folder of real photos: which training recipe recognises snakes best?

    python bench/recipes.py --data ../shared/realdata/ph-snakes-dev --seeds 3 \
        --out bench/recipes.json
    python bench/recipes.py --fast --out /tmp/recipes-fast.json      # tiny synthetic smoke run

Protocol (honest by construction):

* The photos go through the real pipeline code once: the `folder` source (`scan_folder` +
  `import_folder` via `run_download`) and `verify`, into a work dir under /tmp. A dataset that
  comes with train/val folders is first laid out flat (symlinks, `<pool>/<Species>/<split>__<file>`)
  so that `snakeid.split.assign_splits` makes the split: every seed s draws its own grouped,
  stratified 70/15/15 split (split seed = training seed = s), "repeated grouped splits".
* Each recipe trains on train, chooses its epoch, softmax temperature and venomous threshold on
  val, and is scored on that seed's held-out internal test split with `snakeid.evaluate.evaluate`.
* Recipes are ranked by mean **val** macro-F1 over seeds; the test numbers are only reported.
* Compute: the frozen backbone prefix runs once per (seed, image size, augmentation, views) into a
  feature cache (`snakeid.train.cache_features`, cut deep enough for the deepest fine-tune); the
  shallower cuts and the pooled head inputs are derived from it once through the frozen,
  pretrained blocks. Every recipe that changes only what is trained on top reuses those caches,
  and the head stage is memoised per (cache, head settings). Nothing derived from the photos is
  written outside the work dir; the JSON/markdown hold aggregate numbers only.

Results are rewritten after every run, so an interrupted run leaves a usable table, and a rerun
with the same `--out` skips the runs already there.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2 as T

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from snakeid import split as splitting  # noqa: E402
from snakeid import verify  # noqa: E402
from snakeid.calibration import calibrate_on_val  # noqa: E402
from snakeid.config import base_config, load_params, section  # noqa: E402
from snakeid.data import DataConfig, SplitDataset, eval_transform  # noqa: E402
from snakeid.evaluate import EvaluateConfig, evaluate, predict_logits  # noqa: E402
from snakeid.manifest import CLEAN_COLUMNS, read_manifest, write_manifest  # noqa: E402
from snakeid.metrics import macro_f1  # noqa: E402
from snakeid.models import DeployedModel, ModelConfig, SnakeNet, build_model  # noqa: E402
from snakeid.sources import DownloadConfig, run_download  # noqa: E402
from snakeid.taxa import Species, load_species  # noqa: E402
from snakeid.train import (  # noqa: E402
    Caches,
    FeatureCache,
    FinetuneConfig,
    LossConfig,
    Setup,
    TrainHeadConfig,
    cache_features,
    check_imbalance_options,
    feature_engine,
    fit_spec,
    fit_tail,
    freeze_all_but,
    load_caches,
    predict_cached,
    prefix_engine,
    train_tail,
)
from snakeid.utils import seed_everything, write_json  # noqa: E402

_logger = logging.getLogger("recipes")

# ---------------------------------------------------------------------------------------------
# Recipes: overrides of params.yaml sections, applied on top of the study's baseline.

# The original study's recipe: head 10 epochs at 1e-3, then the last block (the 1x1 head conv)
# 5 epochs at lr x 0.5, plain cross-entropy, constant lr, best epoch by val accuracy,
# EfficientNet-Lite0 at 224 px, basic augmentation. `data.views` is set by --views for all rows.
BASELINE: dict[str, dict[str, Any]] = {
    "base": {"backbone": "efficientnet_lite0", "image_size": 224, "device": "cpu"},
    "model": {"pretrained": True, "dropout": 0.2, "tta_flip": False},
    "data": {"augment": "basic", "random_erasing": 0.0, "sampler": "none", "batch_size": 32},
    "loss": {"class_weighting": "none", "label_smoothing": 0.0, "logit_adjustment": 0.0},
    "train_head": {
        "epochs": 10, "lr": 1e-3, "weight_decay": 0.01, "select_metric": "accuracy",
        "schedule": "constant", "warmup_epochs": 0, "ema_decay": 0.0,
    },
    "finetune": {
        "epochs": 5, "unfreeze_blocks": 1, "lr_scale": 0.5, "layer_lr_decay": 1.0,
        "weight_decay": 0.01, "select_metric": "accuracy", "schedule": "constant",
        "warmup_epochs": 0, "ema_decay": 0.0,
        # post-hoc, never change the argmax: fitted for every row so ECE and the rule compare
        "temperature_scaling": True, "venomous_miss_target": 0.02,
    },
}  # fmt: skip


def _both(**kw: Any) -> dict[str, dict[str, Any]]:
    """The same training option for both stages."""
    return {"train_head": dict(kw), "finetune": dict(kw)}


@dataclass(frozen=True)
class Recipe:
    name: str
    overrides: dict[str, dict[str, Any]]
    what: str
    family: str  # candidates of one family are alternatives: at most one joins the combination
    seeds: int | None = None  # run on at most this many seeds (expensive, one-seed rule-outs)


# In the order they run: the most informative (and cheapest, cache-sharing) first.
CANDIDATES: list[Recipe] = [
    Recipe("baseline", {}, "study recipe (see BASELINE)", "baseline"),
    Recipe("select_f1", _both(select_metric="macro_f1"), "best epoch by val macro-F1", "select"),
    Recipe("unfreeze2", {"finetune": {"unfreeze_blocks": 2}}, "fine-tune last 2 blocks", "depth"),
    Recipe("ft_lr1", {"finetune": {"lr_scale": 1.0}}, "fine-tune at lr x 1.0", "ft_lr"),
    Recipe(
        "cosine",
        _both(schedule="cosine", warmup_epochs=1),
        "cosine schedule, 1 warm-up epoch (both stages)",
        "schedule",
    ),
    Recipe("smooth", {"loss": {"label_smoothing": 0.1}}, "label smoothing 0.1", "smooth"),
    Recipe("ema", _both(ema_decay=0.99), "EMA of weights, decay 0.99 (both stages)", "ema"),
    Recipe("tta", {"model": {"tta_flip": True}}, "test-time flip averaging", "tta"),
    Recipe("views4", {"data": {"views": 4}}, "4 cached augmented views per photo", "views"),
    Recipe(
        "ft_epochs10",
        {"train_head": {"epochs": 20}, "finetune": {"epochs": 10}},
        "twice the epochs (head 20, fine-tune 10)",
        "epochs",
    ),
    Recipe(
        "sqrt_inverse",
        {"loss": {"class_weighting": "sqrt_inverse"}},
        "loss weights 1/sqrt(n)",
        "imbalance",
    ),
    Recipe("balanced", {"data": {"sampler": "balanced"}}, "class-balanced sampler", "imbalance"),
    Recipe("logit_adj", {"loss": {"logit_adjustment": 1.0}}, "logit adjustment tau=1", "imbalance"),
    # own feature caches
    Recipe(
        "trivialaugment",
        {"data": {"augment": "trivialaugment"}},
        "TrivialAugmentWide views",
        "augment",
        seeds=1,
    ),
    Recipe(
        "random_erasing",
        {"data": {"random_erasing": 0.25}},
        "random erasing p=0.25",
        "augment",
        seeds=1,
    ),
    Recipe("size288", {"base": {"image_size": 288}}, "288 px input (upscaled)", "size", seeds=1),
    Recipe("unfreeze3", {"finetune": {"unfreeze_blocks": 3}}, "fine-tune last 3 blocks", "depth"),
    Recipe(
        "unfreeze3_lld",
        {"finetune": {"unfreeze_blocks": 3, "layer_lr_decay": 0.5}},
        "last 3 blocks, lr x 0.5 per block down (discriminative)",
        "depth",
    ),
]
CHEAP = {
    "baseline",
    "select_f1",
    "unfreeze2",
    "unfreeze3",
    "unfreeze3_lld",
    "ft_lr1",
    "cosine",
    "smooth",
    "ema",
    "tta",
    "ft_epochs10",
    "sqrt_inverse",
    "balanced",
    "logit_adj",
}
# one-seed rule-outs (own caches) and the slowest candidates: last, a deadline may cut them
LATE = {"trivialaugment", "random_erasing", "size288", "unfreeze3", "unfreeze3_lld"}
# run first, on every seed, before the combination is chosen
TIER_A = {"baseline", "select_f1", "unfreeze2", "ft_lr1", "cosine", "smooth", "ema",
          "ft_epochs10"}  # fmt: skip


def merge(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for sec, values in layer.items():
            out[sec] = {**out.get(sec, {}), **copy.deepcopy(values)}
    return out


# ---------------------------------------------------------------------------------------------
# Data: folder source + verify once, then one grouped split per seed


def flat_pool(data: Path, pool: Path) -> Path:
    """`<data>/{train,val}/<Species>/f` → `<pool>/<Species>/<split>__f` (symlinks), so that the
    split stage, not the folder, decides train/val/test. A flat folder is used as it is."""
    splits = [
        d for d in sorted(data.iterdir()) if d.is_dir() and d.name in ("train", "val", "test")
    ]
    if not splits:
        return data
    if pool.exists():
        return pool
    tmp = pool.with_name(pool.name + ".part")
    for split_dir in splits:
        for sp in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            (tmp / sp.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(sp.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    (tmp / sp.name / f"{split_dir.name}__{f.name}").symlink_to(f.resolve())
    tmp.rename(pool)
    return pool


def import_and_verify(
    data: Path, work: Path, species: list[Species], params: dict[str, Any]
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Folder source + verify, cached in `work`; returns clean manifest rows and verify metrics."""
    clean = work / "clean"
    if not (clean / "manifest.csv").exists():
        pool = flat_pool(data, work / "pool")
        run_download(
            DownloadConfig(source="folder", folder=str(pool)), species, work / "raw", seed=0
        )
        cfg = section(params, "verify", verify.VerifyConfig)
        result = verify.run(work / "raw", clean, species, cfg)
        write_json(work / "verify.json", result.metrics)
    metrics = json.loads((work / "verify.json").read_text())
    return read_manifest(clean / "manifest.csv"), metrics


def make_split(
    rows: list[dict[str, str]], species: list[Species], seed: int, out: Path
) -> dict[str, Any]:
    cfg = splitting.SplitConfig(train=0.70, val=0.15, test=0.15)
    result = splitting.assign_splits(rows, species, cfg, seed)
    for x, split_rows in result.splits.items():
        write_manifest(out / f"{x}.csv", split_rows, CLEAN_COLUMNS)
    return result.metrics["photos"]


# ---------------------------------------------------------------------------------------------
# Feature caches


@dataclass
class CacheSet:
    """Every frozen feature a recipe needs, per cut (index in `features` where training starts;
    `pooled` = the head's inputs)."""

    train: dict[Any, FeatureCache]
    val: dict[Any, FeatureCache]
    test: dict[Any, FeatureCache]
    val_flip: dict[Any, FeatureCache]
    test_flip: dict[Any, FeatureCache]
    train_labels: np.ndarray
    val_labels: np.ndarray
    test_ids: list[str]
    seconds: float
    images_per_s: float

    def caches(self, cut: Any) -> Caches:
        return Caches(self.train[cut], self.val[cut], self.train_labels, self.val_labels, cut)


POOLED = "pooled"


def build_caches(
    pristine: SnakeNet,
    split_dir: Path,
    out: Path,
    species: list[Species],
    params: dict[str, Any],
    base_cut: int,
) -> CacheSet:
    """Fill (or reopen) the caches of one (seed, image size, augmentation, views) setting.

    The flipped val/test views (for TTA) are filled only on demand, by `add_flips`.
    """
    base = base_config(params)
    data = section(params, "data", DataConfig)
    started = time.perf_counter()
    c0 = out / f"cut{base_cut}"
    if (c0 / "features.json").exists():
        first = load_caches(c0, split_dir=split_dir, base=base, data=data, cut=base_cut)
    else:
        first = cache_features(
            pristine, base_cut, c0, split_dir=split_dir, species=species, base=base, data=data
        )
    images_per_s = json.loads((c0 / "features.json").read_text()).get("images_per_s")
    extra = out / f"extra{base_cut}"
    extra.mkdir(parents=True, exist_ok=True)
    cs = CacheSet(
        train=_derived(pristine, extra, "train", first.train, base_cut),
        val=_derived(pristine, extra, "val", first.val, base_cut),
        test=_derived(
            pristine,
            extra,
            "test",
            _eval_cache(pristine, extra, split_dir, species, params, base_cut, "test", flip=False),
            base_cut,
        ),  # fmt: skip
        val_flip={},
        test_flip={},
        train_labels=first.train_labels,
        val_labels=first.val_labels,
        test_ids=[r["photo_id"] for r in read_manifest(split_dir / "test.csv")],
        seconds=time.perf_counter() - started,
        images_per_s=images_per_s,
    )
    _CONTEXT[id(cs)] = (pristine, extra, split_dir, species, params, base_cut)
    return cs


_CONTEXT: dict[int, tuple[Any, ...]] = {}


def add_flips(cs: CacheSet) -> None:
    """The mirrored val and test photos, one more frozen pass over them (TTA recipes only)."""
    if cs.val_flip:
        return
    pristine, extra, split_dir, species, params, base_cut = _CONTEXT[id(cs)]
    for name, split, target in (
        ("val_flip", "val", cs.val_flip),
        ("test_flip", "test", cs.test_flip),
    ):  # noqa: E501
        first = _eval_cache(pristine, extra, split_dir, species, params, base_cut, split, flip=True)
        target.update(_derived(pristine, extra, name, first, base_cut))


def _eval_cache(
    pristine: SnakeNet,
    extra: Path,
    split_dir: Path,
    species: list[Species],
    params: dict[str, Any],
    cut: int,
    split: str,
    *,
    flip: bool,
) -> FeatureCache:
    """One eval view of a split at `cut` (optionally mirrored, == torch.flip(x, [3]))."""
    name = f"{split}{'_flip' if flip else ''}_c{cut}"
    if (extra / f"{name}.done").exists():
        return FeatureCache.open(extra, name)
    base = base_config(params)
    tf = eval_transform(base.image_size)
    if flip:
        tf = T.Compose([tf, T.RandomHorizontalFlip(p=1.0)])
    ds = SplitDataset.from_csv(split_dir / f"{split}.csv", species, tf)
    cache = FeatureCache(extra, name)
    data = section(params, "data", DataConfig)
    engine = feature_engine(data.feature_engine, "cpu")
    with prefix_engine(pristine.features[:cut], engine, "cpu", base.image_size) as prefix:
        cache.fill(
            prefix, ds, views=1, batch_size=32, workers=0, seed=base.seed,
            desc=f"{name} features",
        )  # fmt: skip
    (extra / f"{name}.done").touch()
    return cache


def _derived(
    pristine: SnakeNet, extra: Path, name: str, first: FeatureCache, base_cut: int
) -> dict[Any, FeatureCache]:
    """`first` (at `base_cut`) and the same photos at every shallower cut and pooled: the
    frozen pretrained blocks applied once, here, instead of once per recipe."""
    out: dict[Any, FeatureCache] = {base_cut: first}
    n = len(pristine.features)
    prev: Any = base_cut
    for cut in [*range(base_cut + 1, n), POOLED]:
        key = f"{name}_c{cut}"
        if (extra / f"{key}.done").exists():
            out[cut] = FeatureCache.open(extra, key)
        else:
            module = (
                pristine.frozen_between(n - 1, 0) if cut == POOLED else pristine.features[prev:cut]
            )
            out[cut] = out[prev].mapped(module, extra, key, "cpu")
            (extra / f"{key}.done").touch()
        prev = cut
    return out


# ---------------------------------------------------------------------------------------------
# One run: head, fine-tune, calibrate on val, evaluate on the internal test split


@dataclass
class Context:
    species: list[Species]
    pristine: SnakeNet
    eval_cfg: EvaluateConfig
    head_memo: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_memo: dict[str, tuple[Any, ...]] = field(default_factory=dict)


def train_head(model: SnakeNet, cs: CacheSet, setup: Setup, fit: Any) -> dict[str, Any]:
    """`train_tail(model, 0, ...)` on the cached pooled features (no per-run mapping)."""
    check_imbalance_options(setup.data, fit.loss)
    _, tail = model.split(0)
    freeze_all_but(model, model.trainable_parameters(0))
    groups = model.param_groups(0, fit.lr, fit.layer_lr_decay)
    c = cs.caches(POOLED)
    labels = np.unique(c.val_labels)
    result = fit_tail(
        model, tail, groups, c.train, c.train_labels, c.val, c.val_labels, labels, fit,
        device="cpu",
    )  # fmt: skip
    model.load_state_dict(result.state_dict)
    return {
        "classifier": {k: v.clone() for k, v in model.classifier.state_dict().items()},
        "val_macro_f1": result.best["val_macro_f1"],
        "best_epoch": result.best_epoch,
    }


def cut_of(model: SnakeNet, unfreeze_blocks: int) -> Any:
    return POOLED if unfreeze_blocks == 0 else model.cut(unfreeze_blocks)


def run_recipe(
    ctx: Context, cs: CacheSet, params: dict[str, Any], seed: int, split_dir: Path
) -> dict[str, Any]:
    started = time.perf_counter()
    base = base_config(params)
    data = section(params, "data", DataConfig)
    loss = section(params, "loss", LossConfig)
    model_cfg = section(params, "model", ModelConfig)
    head_cfg = section(params, "train_head", TrainHeadConfig)
    cfg = section(params, "finetune", FinetuneConfig)
    check_imbalance_options(data, loss)
    setup = Setup(base, data, loss, ctx.species)
    seed_everything(seed, base.deterministic)

    # TTA and the post-hoc calibration do not change training: such recipes reuse the model
    trained = {k: dict(v) for k, v in params.items()}
    trained["model"] = {k: v for k, v in trained["model"].items() if k != "tta_flip"}
    train_key = json.dumps([id(cs), trained], sort_keys=True, default=str)
    if train_key not in ctx.train_memo:
        model = copy.deepcopy(ctx.pristine)
        model.dropout.p = model_cfg.dropout
        head_fit = fit_spec(head_cfg, setup, epochs=head_cfg.epochs, lr=head_cfg.lr, seed=seed)
        head_key = json.dumps([id(cs), str(head_fit), model_cfg.dropout], sort_keys=True)
        if head_key not in ctx.head_memo:
            ctx.head_memo[head_key] = train_head(model, cs, setup, head_fit)
        head = ctx.head_memo[head_key]
        model.classifier.load_state_dict(head["classifier"])

        seed_everything(seed + 1, base.deterministic)  # the same state, memoised head or not
        fit = fit_spec(
            cfg, setup, epochs=cfg.epochs or max(2, head_cfg.epochs // 2),
            lr=head_cfg.lr * cfg.lr_scale, seed=seed + 1,
        )  # fmt: skip
        u = cfg.unfreeze_blocks
        result = train_tail(
            model, u, cs.caches(cut_of(model, u)), base=base, data=data, fit=fit, stage="finetune"
        )
        ctx.train_memo[train_key] = (model, result, head, time.perf_counter() - started)
    model, result, head, train_seconds = ctx.train_memo[train_key]
    u = cfg.unfreeze_blocks
    cut = cut_of(model, u)
    if model_cfg.tta_flip:
        add_flips(cs)
    _, tail = model.split(u)
    val_logits = result.fit.val_logits
    # The finetune stage fits T and the venomous threshold on plain val logits (it does not
    # know about TTA); the val macro-F1 that ranks recipes uses the deployed (TTA) decision.
    calibration = calibrate_on_val(
        val_logits, result.val_labels, ctx.species,
        temperature_scaling=cfg.temperature_scaling, miss_target=cfg.venomous_miss_target,
    )  # fmt: skip
    if model_cfg.tta_flip:
        val_logits = 0.5 * (val_logits + predict_cached(tail, cs.val_flip[cut], device="cpu")[1])
    labels = np.unique(result.val_labels)
    val_f1 = macro_f1(result.val_labels, val_logits.argmax(1), labels)
    val_acc = float((val_logits.argmax(1) == result.val_labels).mean())

    test_logits = predict_cached(tail, cs.test[cut], device="cpu")[1]
    if model_cfg.tta_flip:
        test_logits = 0.5 * (test_logits + predict_cached(tail, cs.test_flip[cut], device="cpu")[1])
    test_logits = test_logits / calibration["temperature"]  # what DeployedModel outputs
    row_of = {pid: i for i, pid in enumerate(cs.test_ids)}

    def predict(rows: list[dict[str, str]]) -> np.ndarray:
        return test_logits[[row_of[r["photo_id"]] for r in rows]]

    ev = evaluate(
        predict,
        read_manifest(split_dir / "test.csv"),
        read_manifest(split_dir / "train.csv"),
        ctx.species,
        ctx.eval_cfg,
        seed=seed,
        calibration=calibration,
    )
    m = ev.metrics
    return {
        "val_macro_f1": val_f1,
        "val_accuracy": val_acc,
        "head_val_macro_f1": head["val_macro_f1"],
        "head_best_epoch": head["best_epoch"],
        "best_epoch": result.fit.best_epoch,
        "test_macro_f1": m["macro_f1"],
        "test_accuracy": m["accuracy"],
        "test_balanced_accuracy": m["balanced_accuracy"],
        "test_venomous_to_harmless_rate": m["venomous_to_harmless_rate"],
        "test_harmless_to_venomous_rate": m["harmless_to_venomous_rate"],
        "test_rule_venomous_missed_rate": m["venomous_rule"]["venomous_missed_rate"],
        "test_rule_harmless_flagged_rate": m["venomous_rule"]["harmless_flagged_rate"],
        "venomous_threshold": calibration["venomous_threshold"],
        "temperature": calibration["temperature"],
        "val_ece_before": calibration["val_ece_before"],
        "val_ece_after": calibration["val_ece_after"],
        "test_ece_before": m["ece_uncalibrated"],
        "test_ece_after": m["ece"],
        "n_test": m["n_test"],
        "train_seconds": round(train_seconds, 1),  # head + fine-tune (memoised: first run's)
        "_model": model,  # dropped before saving; used by the parity check
        "_cut": cut,
    }


def parity_check(
    ctx: Context, cs: CacheSet, model: SnakeNet, cut: Any, unfreeze: int, split_dir: Path, n: int
) -> dict[str, float]:
    """The cached path against the deployed model on photos: same logits up to float16."""
    rows = read_manifest(split_dir / "test.csv")[:n]
    image_size = _image_size_of(cs)
    full = predict_logits(
        DeployedModel(model, temperature=1.0, tta_flip=False), rows, ctx.species, image_size
    )
    _, tail = model.split(unfreeze)
    cached = predict_cached(tail, cs.test[cut], device="cpu")[1][: len(rows)]
    return {
        "photos": len(rows),
        "max_abs_logit_diff": float(np.abs(full - cached).max()),
        "argmax_agreement": float((full.argmax(1) == cached.argmax(1)).mean()),
    }


_IMAGE_SIZE: dict[int, int] = {}


def _image_size_of(cs: CacheSet) -> int:
    return _IMAGE_SIZE[id(cs)]


# ---------------------------------------------------------------------------------------------
# Summaries


METRICS = (
    "val_macro_f1", "test_macro_f1", "test_accuracy", "test_balanced_accuracy",
    "test_venomous_to_harmless_rate", "test_rule_venomous_missed_rate",
    "test_rule_harmless_flagged_rate", "test_ece_before", "test_ece_after", "temperature",
    "venomous_threshold", "best_epoch", "train_seconds",
)  # fmt: skip


def summarise(recipes: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    base_runs = recipes.get("baseline", {}).get("runs", {})
    for name, rec in recipes.items():
        runs = rec["runs"]
        if not runs:
            continue
        row: dict[str, Any] = {"recipe": name, "what": rec["what"], "seeds": sorted(runs)}
        for k in METRICS:
            v = [r[k] for r in runs.values() if r.get(k) is not None]
            row[k] = (
                {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                if v
                else None
            )  # noqa: E501
        # paired with the baseline on the same seeds: the split noise cancels
        common = [s for s in runs if s in base_runs]
        if common and name != "baseline":
            for k in ("val_macro_f1", "test_macro_f1"):
                d = [runs[s][k] - base_runs[s][k] for s in common]
                row[f"delta_{k}"] = {"mean": float(np.mean(d)), "seeds": len(d)}
        rows.append(row)
    order = [c.name for c in CANDIDATES]
    return sorted(rows, key=lambda r: (r["recipe"] not in order, order.index(r["recipe"])
                                       if r["recipe"] in order else 0, r["recipe"]))  # fmt: skip


def _ms(x: dict[str, float] | None, pct: bool = False) -> str:
    if x is None:
        return "–"
    f = 100.0 if pct else 1.0
    return (
        f"{x['mean'] * f:.1f} ± {x['std'] * f:.1f}" if pct else f"{x['mean']:.3f} ± {x['std']:.3f}"
    )


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Recipe comparison on real photos",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Data: {meta['data']} — {meta['photos_after_verify']} photos after verify, "
        f"{meta['species']} species; per seed s a fresh grouped stratified 70/15/15 split "
        f"(split seed = training seed = s; seeds {meta['seeds']}). Cached augmented views per "
        f"training photo: {meta['views']} for every row (baseline included) unless the recipe "
        f"sets `data.views`. Backbone {meta['backbone']}. Rows with fewer seeds are one-seed "
        "rule-outs (their Δ is paired with the baseline on those seeds only).",
        "",
        "**Selection column: mean val macro-F1 (recipes are chosen on val only). All other "
        "columns: the internal test split of each seed, mean ± std over seeds.** "
        "Δ = paired difference to the baseline on the same seeds. V→H = venomous photos called "
        'a harmless species (argmax); rule = "possibly venomous" when P(venomous) ≥ a '
        "threshold fitted on val (miss ≤ 2 % of val venomous). ECE before → after temperature "
        "scaling fitted on val.",
        "",
        "| recipe | seeds | val macro-F1 (select) | Δ val | test macro-F1 | Δ test | test acc "
        "| test bal. acc | V→H % (argmax) | rule: V missed % | rule: H flagged % "
        "| ECE before → after | train s/seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        dv, dt_ = r.get("delta_val_macro_f1"), r.get("delta_test_macro_f1")
        ece = (
            f"{r['test_ece_before']['mean']:.3f} → {r['test_ece_after']['mean']:.3f}"
            if r["test_ece_before"]
            else "–"
        )
        dv = f"{dv['mean']:+.3f}" if dv else ""
        dt_ = f"{dt_['mean']:+.3f}" if dt_ else ""
        lines.append(
            f"| {r['recipe']} | {len(r['seeds'])} | {_ms(r['val_macro_f1'])} | {dv} "
            f"| {_ms(r['test_macro_f1'])} | {dt_} "
            f"| {_ms(r['test_accuracy'])} | {_ms(r['test_balanced_accuracy'])} "
            f"| {_ms(r['test_venomous_to_harmless_rate'], True)} "
            f"| {_ms(r['test_rule_venomous_missed_rate'], True)} "
            f"| {_ms(r['test_rule_harmless_flagged_rate'], True)} | {ece} "
            f"| {r['train_seconds']['mean']:.0f} |"
        )
    full = [r for r in result["summary"] if r["recipe"].startswith("combined")
            and len(r["seeds"]) == meta["n_seeds"]]  # fmt: skip
    if full:
        win = max(full, key=lambda r: r["val_macro_f1"]["mean"])
        rec = result["recipes"][win["recipe"]]
        lines += [
            "",
            f"**Chosen on val: `{win['recipe']}`** (highest mean val macro-F1 of the "
            f"combinations run on all seeds): `{json.dumps(rec['overrides'])}`.",
        ]
    lines += ["", "Recipes (overrides of the baseline's params.yaml sections):", ""]
    for r in result["summary"]:
        rec = result["recipes"][r["recipe"]]
        lines.append(f"- `{r['recipe']}`: {rec['what']} — `{json.dumps(rec['overrides'])}`")
    if result.get("combined"):
        lines += ["", f"Combination rule: {result['combined']['rule']}", ""]
        for name, c in result["combined"].get("chosen", {}).items():
            lines.append(f"- {name}: {c}")
    lines += [
        "",
        f"Feature caches: {meta.get('cache_note', '')}",
        f"Parity (cached path vs deployed model on photos): {meta.get('parity')}",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Driver


def combine(result: dict[str, Any], families_allowed: set[str]) -> tuple[dict[str, Any], dict]:
    """Winners on mean val macro-F1 (paired with the baseline): the best of each family that
    beats the baseline, merged. Only val numbers are read."""
    chosen: dict[str, Any] = {}
    best: dict[str, tuple[float, str]] = {}
    for r in result["summary"]:
        rec = result["recipes"][r["recipe"]]
        fam = rec["family"]
        d = r.get("delta_val_macro_f1")
        if fam not in families_allowed or not d or len(r["seeds"]) < result["meta"]["n_seeds"]:
            continue
        if d["mean"] > 0 and d["mean"] > best.get(fam, (-1.0, ""))[0]:
            best[fam] = (d["mean"], r["recipe"])
    overrides: dict[str, Any] = {}
    for fam, (d, name) in sorted(best.items()):
        overrides = merge(overrides, result["recipes"][name]["overrides"])
        chosen[name] = f"family {fam}, Δ val macro-F1 {d:+.3f}"
    return overrides, chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, help="folder of photos (<species>/ or {train,val}/<species>/)"
    )
    ap.add_argument("--species", type=Path, help="species file (default: <data>/species.yaml)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--views", type=int, default=1, help="cached augmented views per photo")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "recipes.json")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "snakeid-recipes")
    ap.add_argument("--recipes", default="", help="comma-separated subset of the candidates")
    ap.add_argument("--no-combine", action="store_true")
    ap.add_argument("--deadline", default="", help="HH:MM local time: start no run after it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fast", action="store_true", help="tiny synthetic folder, tiny settings")
    ap.add_argument("--report", action="store_true", help="only rewrite the markdown of --out")
    args = ap.parse_args()
    if args.report:
        _save(_load(args.out), args.out)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("snakeid.split", "snakeid.verify", "snakeid.sources", "snakeid.train"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    params = load_params(REPO / "params.yaml")
    scale: dict[str, dict[str, Any]] = {"data": {"views": args.views}}
    candidates = CANDIDATES
    if args.fast:
        args.work.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="fast-", dir=args.work))
        args.data = synthetic_folder(work / "photos")
        args.species = work / "photos" / "species.yaml"
        args.work = work
        scale = {
            "data": {"views": 1, "batch_size": 16},
            "base": {"image_size": 64},
            "train_head": {"epochs": 2},
            "finetune": {"epochs": 1},
        }
        keep = {"baseline", "unfreeze2", "tta"}
        candidates = [c for c in CANDIDATES if c.name in keep]
    if args.data is None:
        ap.error("--data is required (or --fast)")
    if args.recipes:
        want = args.recipes.split(",")
        candidates = [c for c in CANDIDATES if c.name in want]
    species_file = args.species or args.data / "species.yaml"
    species = load_species(species_file)
    data_key = hashlib.sha256(str(args.data.resolve()).encode()).hexdigest()[:10]
    work = args.work / data_key
    work.mkdir(parents=True, exist_ok=True)
    rows, verify_metrics = import_and_verify(args.data, work, species, params)
    seeds = list(range(args.seeds))
    deadline = _deadline(args.deadline)

    # params.yaml's sections, then the study's baseline, then the run scale, then the recipe
    common = merge(
        {k: params[k] for k in ("base", "model", "data", "loss", "train_head", "finetune")},
        BASELINE,
        {"base": {"species_file": str(species_file), "threads": args.threads}},
        scale,
    )
    pristine = build_model(
        common["base"]["backbone"], len(species), section(common, "model", ModelConfig)
    )
    ctx = Context(species, pristine.eval(), EvaluateConfig(bootstrap=200))
    for p in pristine.parameters():
        p.requires_grad_(False)

    result = _load(args.out) if args.out.exists() and not args.fast else {"recipes": {}}
    result["meta"] = {
        "command": " ".join(["python", "bench/recipes.py", *sys.argv[1:]]),
        "data": str(args.data),
        "species": len(species),
        "photos_after_verify": len(rows),
        "verify_dropped": verify_metrics.get("dropped", verify_metrics.get("photos", {})),
        "seeds": seeds,
        "n_seeds": len(seeds),
        "views": common["data"]["views"],
        "backbone": common["base"]["backbone"],
        "threads": args.threads,
        "protocol": (
            "per seed: grouped stratified 70/15/15 split of all photos (train+val pooled); "
            "train on train; epoch, temperature and venomous threshold chosen on val; recipes "
            "ranked by mean val macro-F1; the table's test columns are the internal test split"
        ),
        "parity": result.get("meta", {}).get("parity"),
        "cache_seconds": result.get("meta", {}).get("cache_seconds", {}),
    }
    max_u = max(
        merge(BASELINE, c.overrides)["finetune"].get("unfreeze_blocks", 1) for c in candidates
    )
    base_cut = pristine.cut(max_u)  # the deepest fine-tune's cut serves every shallower one
    cache_sets: dict[str, CacheSet] = {}
    split_dirs: dict[int, Path] = {}

    def split_dir(seed: int) -> Path:
        if seed not in split_dirs:
            d = work / f"seed{seed}" / "split"
            if not (d / "test.csv").exists():
                make_split(rows, species, seed, d)
            split_dirs[seed] = d
        return split_dirs[seed]

    def caches_for(seed: int, p: dict[str, Any]) -> CacheSet:
        b, d = p["base"], p["data"]
        key = f"seed{seed}-{b['image_size']}-{d['augment']}-re{d['random_erasing']}-v{d['views']}"
        if key not in cache_sets:
            # one cache set held open at a time per seed setting keeps memory bounded
            started = time.perf_counter()
            cs = build_caches(
                pristine, split_dir(seed), work / f"seed{seed}" / key, species,
                merge(p, {"base": {"seed": seed}}), base_cut,
            )  # fmt: skip
            _IMAGE_SIZE[id(cs)] = b["image_size"]
            cache_sets[key] = cs
            result["meta"]["cache_seconds"].setdefault(key, round(time.perf_counter() - started, 1))
            result["meta"]["cache_images_per_s"] = cs.images_per_s
        return cache_sets[key]

    def run(recipe: Recipe, seed: int) -> bool:
        if deadline and dt.datetime.now() >= deadline:
            _logger.warning(
                "deadline %s passed: not starting %s seed %d", args.deadline, recipe.name, seed
            )
            return False
        p = merge(common, recipe.overrides, {"base": {"seed": seed}})
        entry = result["recipes"].setdefault(
            recipe.name,
            {
                "what": recipe.what,
                "family": recipe.family,
                "overrides": recipe.overrides,
                "runs": {},
            },
        )
        if entry["overrides"] != recipe.overrides:  # a changed definition: start it over
            entry.update(overrides=recipe.overrides, what=recipe.what, runs={})
        if str(seed) in entry["runs"]:
            return True
        cs = caches_for(seed, p)
        _logger.info("run %s seed %d", recipe.name, seed)
        r = run_recipe(ctx, cs, p, seed, split_dir(seed))
        model, cut = r.pop("_model"), r.pop("_cut")
        if result["meta"].get("parity") is None:
            u = p["finetune"]["unfreeze_blocks"]
            result["meta"]["parity"] = parity_check(ctx, cs, model, cut, u, split_dir(seed), 32)
        entry["runs"][str(seed)] = r
        _logger.info(
            "%s seed %d: val F1 %.3f  test F1 %.3f acc %.3f V→H %.3f  (%.0fs)", recipe.name, seed,
            r["val_macro_f1"], r["test_macro_f1"], r["test_accuracy"],
            r["test_venomous_to_harmless_rate"] or 0, r["train_seconds"],
        )  # fmt: skip
        _save(result, args.out)
        return True

    # Tier A: the cache-sharing candidates most likely to matter, seed by seed; then their
    # combination; then the rest, one candidate at a time over its seeds (the deadline may cut
    # the tail of this list, never the combination).
    tier_a = [c for c in candidates if c.name in TIER_A]
    rest = [c for c in candidates if c.name not in TIER_A]
    for seed in seeds:
        for recipe in tier_a:
            run(recipe, seed)
    if not args.no_combine:
        run_combined(result, run, seeds, {c.family for c in tier_a} - {"baseline"}, "combined")

    def run_all(recipes: list[Recipe]) -> None:
        for recipe in recipes:
            for seed in seeds[: recipe.seeds or len(seeds)]:
                run(recipe, seed)
            if recipe.name not in CHEAP:
                cache_sets.clear()  # their own caches: close them
            if recipe.name == "tta" and not args.no_combine and "combined" in result["recipes"]:
                fams = {c.family for c in tier_a} | {"tta"} - {"baseline"}
                run_combined(result, run, seeds, fams, "combined_tta")

    run_all([c for c in rest if c.name not in LATE])
    if not args.no_combine:  # every family measured on all seeds, including earlier invocations
        fams = {r["family"] for r in result["recipes"].values()} - {"baseline", "combined"}
        run_combined(result, run, seeds, fams, "combined_final")
        if not args.fast and common["data"]["views"] != 4:
            # params.yaml's demo default caches 4 views: the combinations as they would ship
            run_all([
                Recipe(f"{name}_v4", merge(result["recipes"][name]["overrides"],
                       {"data": {"views": 4}}), f"{name} with 4 cached views", "combined")
                for name in ("combined", "combined_tta") if name in result["recipes"]
            ])  # fmt: skip
    run_all([c for c in rest if c.name in LATE])  # one-seed rule-outs and the slowest
    _save(result, args.out)
    print(args.out.with_suffix(".md").read_text())


def run_combined(
    result: dict[str, Any], run: Any, seeds: list[int], fams: set[str], name: str
) -> None:
    result["summary"] = summarise(result["recipes"])
    overrides, chosen = combine(result, fams)
    if not chosen:
        _logger.warning("%s: no candidate beat the baseline on val; nothing to combine", name)
        return
    earlier = [r["overrides"] for n, r in result["recipes"].items() if n.startswith("combined")]
    if name != "combined" and overrides in earlier:
        return  # nothing new won: the same recipe again would add nothing
    result.setdefault("combined", {})
    result["combined"]["rule"] = (
        "per family (alternatives such as the unfreeze depths or the imbalance corrections), "
        "the candidate with the largest mean paired Δ val macro-F1 > 0 over all seeds joins; "
        "their overrides are merged"
    )
    result["combined"].setdefault("chosen", {}).update(
        {f"{name}: {k}": v for k, v in chosen.items()}
    )
    recipe = Recipe(name, overrides, " + ".join(chosen), "combined")
    for seed in seeds:
        run(recipe, seed)


def synthetic_folder(root: Path, per_species: int = 14, size: int = 96) -> Path:
    """`<root>/{train,val}/<Species>/*.jpg` of coloured blobs plus a species file."""
    from PIL import Image, ImageDraw

    species = [("Naja kaouthia", True), ("Ptyas mucosa", False), ("Bungarus fasciatus", True),
               ("Lycodon capucinus", False)]  # fmt: skip
    colours = [(120, 80, 40), (90, 140, 40), (230, 200, 30), (40, 40, 160)]
    rng = np.random.default_rng(0)
    for si, (name, _) in enumerate(species):
        for k in range(per_species):
            split = "train" if k < per_species * 0.8 else "val"
            d = root / split / name.replace(" ", "_")
            d.mkdir(parents=True, exist_ok=True)
            im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
            draw = ImageDraw.Draw(im)
            for _ in range(5):
                x, y = rng.integers(0, size - 30, 2)
                draw.ellipse([x, y, x + 30, y + 16], fill=colours[si])
            im.save(d / f"{k:03d}.jpg", quality=95)
    (root / "species.yaml").write_text(
        "".join(f"- name: {n}\n  common: {n}\n  venomous: {str(v).lower()}\n" for n, v in species)
    )
    return root


def _deadline(hhmm: str) -> dt.datetime | None:
    if not hhmm:
        return None
    h, m = map(int, hhmm.split(":"))
    return dt.datetime.now().replace(hour=h, minute=m, second=0, microsecond=0)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _save(result: dict[str, Any], path: Path) -> None:
    result["summary"] = summarise(result["recipes"])
    result["meta"]["cache_note"] = (
        f"{len(result['meta']['cache_seconds'])} cache sets, "
        + ", ".join(f"{k}: {v:.0f}s" for k, v in result["meta"]["cache_seconds"].items())
    )
    write_json(path, result)
    path.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
