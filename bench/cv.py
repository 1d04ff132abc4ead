"""Recipe comparison by grouped k-fold cross-validation on a folder of real photos.

    python bench/cv.py --data ../shared/realdata/ph-snakes-dev --out bench/cv.json
    python bench/cv.py --fast --out /tmp/cv-fast.json      # tiny synthetic smoke run

Protocol:

* The photos go through the real pipeline code once: the `folder` source and `verify` (the
  verify params of params.yaml) into a work dir under /tmp. A folder that comes with train/ and
  val/ is pooled first: cross-validation uses every photo.
* The frozen backbones run once per photo and view through the pipeline's own feature code
  (`snakeid.train.features.view_datasets`, `FeatureCache.fill`, `prefix_engine`): view 0 is the eval
  transform, views 1.. the training augmentation. One pass of the multi-backbone model gives every
  trunk's pooled features; a single-backbone recipe reads its trunk's columns. The previous
  default (Lite0 with 2 fine-tuned blocks) needs features before those blocks: a second pass.
* k folds, stratified by species and grouped by observation (`snakeid.model.probe.grouped_folds`).
  Every recipe trains on k-1 folds and is scored on the held-out fold, with the pipeline's own
  functions: the linear probe (`snakeid.model.probe`) with the refit protocol of `train_head`
  (temperature and venomous threshold from out-of-fold logits of the training folds), and the
  AdamW recipes (`snakeid.train.loop.fit_tail`) with an inner grouped val split for epoch and
  calibration, as in the pipeline without refit.
* `probe_views_adapt_<trunk>`: the real-photo setting (`adapt.backbones`) as the pipeline runs
  it: per fold, the trunk fine-tuned end to end on the training photos outside one inner fold,
  which alone calibrates (`adapted_probe_recipe`).
* Reported per recipe: mean ± sd over folds of macro-F1, balanced accuracy, venomous → harmless
  (share of venomous photos whose top-1 is a harmless species), and the "possibly venomous"
  rule's miss and harmless-flag rates at its fitted threshold; training seconds per fold.

Nothing derived from the photos is written outside the work dir; the JSON/markdown hold
aggregate numbers only.
"""

from __future__ import annotations

import argparse
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
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from _realdata import (  # noqa: E402
    CALIBRATION_FOLD,
    COST_RATIOS,
    ENSEMBLE,
    MISS_TARGET_BASELINE,
    adapted,
    clean_rows,
    features,
    miss_target_threshold,
)
from snakeid.config import BaseConfig, load_params, section, to_dict  # noqa: E402
from snakeid.data import verify  # noqa: E402
from snakeid.data.dataset import DataConfig  # noqa: E402
from snakeid.data.manifest import read_manifest  # noqa: E402
from snakeid.data.sources import DownloadConfig, run_download  # noqa: E402
from snakeid.data.split import observation_key  # noqa: E402
from snakeid.model.calibration import (  # noqa: E402
    bayes_threshold,
    calibrate_on_val,
    softmax,
    venomous_probability,
    venomous_rule_report,
)
from snakeid.model.metrics import balanced_accuracy, macro_f1  # noqa: E402
from snakeid.model.models import ModelConfig, SnakeNet, build_model, trunk_sizes  # noqa: E402
from snakeid.model.probe import fit_probe, grouped_folds, out_of_fold_logits, stack_views  # noqa: E402
from snakeid.model.runtime import seed_everything  # noqa: E402
from snakeid.taxa import Species, label_index, load_species  # noqa: E402
from snakeid.train.config import (  # noqa: E402
    AdaptConfig,
    FinetuneConfig,
    LossConfig,
    Setup,
    TrainHeadConfig,
    finetune_settings,
    fit_spec,
)
from snakeid.train.features import FeatureCache  # noqa: E402
from snakeid.train.loop import fit_tail, freeze_all_but  # noqa: E402
from snakeid.utils import write_json  # noqa: E402

_logger = logging.getLogger("cv")

# ---------------------------------------------------------------------------------------------
# Recipes: each maps (training photos, test photos) → calibrated test logits and calibration


@dataclass
class Task:
    """What every recipe sees: labels and groups of all photos, the species, the settings."""

    y: np.ndarray
    groups: list[str]
    species: list[Species]
    seed: int
    cost_ratio: float  # the pipeline's venomous rule (finetune.venomous_cost_ratio)
    inner_folds: int

    @property
    def n_classes(self) -> int:
        return len(self.species)

    def calibrate(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """The pipeline's calibration, plus the miss-target rule's threshold on the same photos."""
        cal = calibrate_on_val(
            logits, labels, self.species, temperature_scaling=True, cost_ratio=self.cost_ratio,
            low_confidence=FinetuneConfig().low_confidence_threshold,
        )  # fmt: skip
        venomous = np.array([s.venomous for s in self.species])
        pv = venomous_probability(softmax(logits, cal["temperature"]), venomous)
        baseline = miss_target_threshold(pv, venomous[labels], MISS_TARGET_BASELINE)
        return cal | {"miss_target_threshold": baseline}

    def loss_weight(self, y: np.ndarray, venomous_weight: float) -> np.ndarray | None:
        """Each photo's loss weight: `venomous_weight` for a venomous species' photo, else 1
        (None: all 1)."""
        if venomous_weight == 1:
            return None
        venomous = np.array([s.venomous for s in self.species])
        return np.where(venomous[y], venomous_weight, 1.0)


Recipe = Callable[[Task, np.ndarray, np.ndarray], tuple[np.ndarray, dict[str, Any]]]


def fit_views(
    views: np.ndarray, y: np.ndarray, n_classes: int, *, sample_weight: np.ndarray | None, **kw: Any
) -> Any:
    """`fit_probe` on every view (V, N, D) of the photos `y`, each view weighted as its photo."""
    tiled = None if sample_weight is None else np.tile(sample_weight, len(views))
    return fit_probe(
        stack_views(views), np.tile(y, len(views)), n_classes, sample_weight=tiled, **kw
    )


def probe_recipe(
    x: np.ndarray,
    *,
    views: int,
    c: float,
    balanced: bool = False,
    refit: bool = True,
    venomous_weight: float = 1.0,
) -> Recipe:
    """The pipeline's default head: a linear probe on `views` cached views, refitted on all the
    training photos, calibrated on out-of-fold logits (train_head.refit). Without `refit`, as
    the pipeline with `train_head.refit: false`: fitted on an inner train split, calibrated on
    its inner val split. `venomous_weight`: the loss of each venomous species' photo counts
    that many times (a cost-weighted objective)."""
    x = x[:views]

    def run(task: Task, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, dict]:
        if not refit:
            inner = grouped_folds(task.y[train], [task.groups[i] for i in train], 7, task.seed)
            train, val = train[inner != 0], train[inner == 0]  # ~1/7 of the photos for val
        xt, yt = np.asarray(x[:, train]), task.y[train]
        weight = task.loss_weight(yt, venomous_weight)
        common = dict(c=c, balanced=balanced, sample_weight=weight)
        probe = fit_views(xt, yt, task.n_classes, **common)
        if refit:
            groups = [task.groups[i] for i in train]
            held, held_y = (
                out_of_fold_logits(
                    xt,
                    yt,
                    grouped_folds(yt, groups, task.inner_folds, task.seed),
                    task.n_classes,
                    **common,
                ),  # fmt: skip
                yt,
            )
        else:
            held, held_y = probe.logits(np.asarray(x[0, val], np.float32)), task.y[val]
        return probe.logits(np.asarray(x[0, test], np.float32)), task.calibrate(held, held_y)

    return run


def adapted_probe_recipe(
    x: np.ndarray,
    rows: list[dict],
    adapt: AdaptConfig,
    data: DataConfig,
    work: Path,
    *,
    c: float,
    venomous_weight: float = 1.0,
) -> Recipe:
    """The real-photo setting as the pipeline runs it: `adapt.backbones` fine-tuned end to end
    (`snakeid.train.adapt`) on the training photos outside one inner fold (`CALIBRATION_FOLD`,
    playing train_head's val photos), their columns of `x` replaced; the probe on every view,
    refitted on all the training photos; calibrated on that inner fold's out-of-fold logits
    alone, never on a photo the adapted trunk trained on."""

    def run(task: Task, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, dict]:
        yt, groups = task.y[train], [task.groups[i] for i in train]
        inner = grouped_folds(yt, groups, task.inner_folds, task.seed)
        calibrate = inner == CALIBRATION_FOLD
        fold_x = adapted(x, rows, task.species, task.species, train[~calibrate], adapt, data,
                         seed=task.seed, work=work / "adapted")  # fmt: skip
        xt = np.asarray(fold_x[:, train], np.float32)
        weight = task.loss_weight(yt, venomous_weight)
        probe = fit_views(xt, yt, task.n_classes, c=c, balanced=False, sample_weight=weight)
        oof = out_of_fold_logits(
            xt, yt, inner, task.n_classes, c=c, balanced=False, sample_weight=weight
        )
        logits = probe.logits(np.asarray(fold_x[0, test], np.float32))
        return logits, task.calibrate(oof[calibrate], yt[calibrate])

    return run


def sgd_recipe(
    model: SnakeNet,
    x: np.ndarray,
    cut: int,
    head: TrainHeadConfig,
    finetune: FinetuneConfig | None,
    data: DataConfig,
    loss: LossConfig,
    work: Path,
) -> Recipe:
    """The AdamW recipe of train_head (and finetune, if given) on features cached at `cut`:
    epoch and calibration chosen on an inner grouped val split of the training photos."""
    pristine = {k: v.clone() for k, v in model.state_dict().items()}

    def fit(net: SnakeNet, blocks: int, tr: FeatureCache, va: FeatureCache, yt, yv, spec):
        _, tail = net.split(blocks)
        params = net.trainable_parameters(blocks)
        freeze_all_but(net, params)
        groups = net.param_groups(blocks, spec.lr, spec.layer_lr_decay)
        return fit_tail(
            net, tail, groups, train=tr, train_labels=yt, val=va, val_labels=yv,
            labels=np.unique(yv), spec=spec, device="cpu",
        )  # fmt: skip

    def run(task: Task, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, dict]:
        inner = grouped_folds(task.y[train], [task.groups[i] for i in train], 7, task.seed)
        tr, va = train[inner != 0], train[inner == 0]  # ~1/7 of the photos for val
        model.load_state_dict(pristine)
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            caches = {
                name: _cache(np.asarray(x[:, idx] if name == "tr" else x[:1, idx]), Path(tmp), name)
                for name, idx in (("tr", tr), ("va", va), ("te", test))
            }
            middle = model.frozen_between(cut, 0)
            pooled = {
                k: c.mapped(middle, Path(tmp), f"{k}_pooled", "cpu") if middle else c
                for k, c in caches.items()
            }
            setup = Setup(BaseConfig(), data, loss, task.species)  # what fit_spec reads
            head_spec = fit_spec(head, setup, epochs=head.epochs, lr=head.lr, seed=task.seed)
            result = fit(model, 0, pooled["tr"], pooled["va"], task.y[tr], task.y[va], head_spec)
            model.load_state_dict(result.state_dict)
            final, blocks = result, 0
            if finetune is not None:
                spec = fit_spec(finetune, setup, **finetune_settings(head, finetune, task.seed))
                final = fit(model, finetune.unfreeze_blocks, caches["tr"], caches["va"],
                            task.y[tr], task.y[va], spec)  # fmt: skip
                model.load_state_dict(final.state_dict)
                blocks = finetune.unfreeze_blocks
            _, tail = model.split(blocks)
            test_cache = pooled["te"] if blocks == 0 else caches["te"]
            with torch.no_grad():
                logits = tail(test_cache.batch(np.zeros(len(test), int), np.arange(len(test))))
        return logits.numpy(), task.calibrate(final.val_logits, task.y[va])

    return run


def _cache(array: np.ndarray, directory: Path, name: str) -> FeatureCache:
    cache = FeatureCache(directory, name)
    cache.array = array
    return cache


# ---------------------------------------------------------------------------------------------
# Scoring


def score(task: Task, test: np.ndarray, logits: np.ndarray, cal: dict[str, Any]) -> dict:
    y = task.y[test]
    pred = logits.argmax(1)
    labels = np.unique(y)
    venomous = np.array([s.venomous for s in task.species])
    is_v = venomous[y]
    pv = venomous_probability(softmax(logits, cal["temperature"]), venomous)
    rule = venomous_rule_report(pv, is_v, cal["miss_target_threshold"])
    bayes = {}
    for k in COST_RATIOS:
        at_k = venomous_rule_report(pv, is_v, bayes_threshold(k))
        bayes[f"cost{k}_missed"] = at_k["venomous_missed_rate"]
        bayes[f"cost{k}_flagged_harmless"] = at_k["harmless_flagged_rate"]
    return {
        "macro_f1": macro_f1(y, pred, labels),
        "balanced_accuracy": balanced_accuracy(y, pred, labels),
        "accuracy": float((pred == y).mean()),
        "venomous_as_harmless": float((is_v & ~venomous[pred]).sum() / max(is_v.sum(), 1)),
        "rule_missed": rule["venomous_missed_rate"],
        "rule_flagged_harmless": rule["harmless_flagged_rate"],
    } | bayes


def cross_validate(task: Task, folds: np.ndarray, recipe: Recipe, name: str) -> dict[str, Any]:
    per_fold = []
    for f in range(folds.max() + 1):
        train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        seed_everything(task.seed + f, True)
        started = time.perf_counter()
        logits, cal = recipe(task, train, test)
        per_fold.append(score(task, test, logits, cal) | {"seconds": time.perf_counter() - started})
        _logger.info("%s fold %d: macro-F1 %.3f", name, f, per_fold[-1]["macro_f1"])
    values = {k: [r[k] for r in per_fold if r[k] is not None] for k in per_fold[0]}
    return {  # a fold without venomous (or harmless) photos has no rule rate
        "folds": per_fold,
        "mean": {k: float(np.mean(v)) if v else None for k, v in values.items()},
        "sd": {k: float(np.std(v, ddof=1)) if len(v) > 1 else None for k, v in values.items()},
    }


# ---------------------------------------------------------------------------------------------
# The comparison


def plan(args: argparse.Namespace) -> list[str]:
    """Recipe names in the order they run (cheap first; results are saved after each)."""
    names = []
    for b in ("lite0", "lite1", "lite2", "lite0+lite1+lite2"):
        names += [f"{b}/probe", f"{b}/probe_views", f"{b}/sgd_head"]
    names += ["lite0+lite2/probe", "lite0+lite1+lite2/probe_views_c0.03",
              "lite0+lite1+lite2/probe_views_c0.3", "lite0+lite1+lite2/probe_views_balanced",
              "lite0/previous_default", "lite0+lite1+lite2/probe_views_norefit",
              "lite0+lite1+lite2/probe_views2", "lite0+lite1+lite2/probe_views3",
              # cost-weighted: a venomous species' photo counts 2 or 5 times in the loss
              "lite0+lite1+lite2/probe_views_vw2", "lite0+lite1+lite2/probe_views_vw5",
              # the slowest last: a trunk trained end to end per fold
              "lite0+lite1+lite2/probe_views_adapt_lite0",
              "lite0+lite1+lite2/probe_views_adapt_lite0_vw5",
              "lite0+lite1+lite2/probe_views_adapt_lite1",
              "lite0+lite1+lite2/probe_views_adapt_lite0+lite1"]  # fmt: skip
    return [n for n in names if not args.only or n in args.only]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, help="folder of photos: <species>/ or {train,val}/<species>/"
    )
    ap.add_argument("--species", type=Path, help="species file (default: <data>/species.yaml)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--only", nargs="*", help="run only these recipes (e.g. lite0/probe)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "snakeid-cv")
    ap.add_argument("--out", type=Path, required=True, help="results JSON (markdown beside it)")
    ap.add_argument("--fast", action="store_true", help="tiny synthetic demo data (smoke test)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(torch.get_num_threads())

    params = load_params(REPO / "params.yaml")
    data = DataConfig(views=args.views, batch_size=32)
    loss = section(params, "loss", LossConfig)
    head_sgd = TrainHeadConfig(method="sgd", refit=False, epochs=20, lr=1e-3)
    ft_prev = FinetuneConfig(unfreeze_blocks=2, lr_scale=1.0)
    work = args.work / ("fast" if args.fast else "real")
    work.mkdir(parents=True, exist_ok=True)
    if args.fast:
        species = load_species(REPO / "data/taxa.yaml")[:5]
        if not (work / "clean/manifest.csv").exists():
            from snakeid.data.sources.demo import DemoConfig

            demo = DemoConfig(observations_rare=6, observations_common=10, image_size=96,
                              broken_files=0, duplicates=0)  # fmt: skip
            run_download(DownloadConfig(source="demo", demo=demo), species, work / "raw", seed=0)
            verify.run(
                work / "raw", work / "clean", species, verify.VerifyConfig(resize_shorter=96)
            )
        rows = read_manifest(work / "clean/manifest.csv")
        args.folds, data = min(args.folds, 3), DataConfig(views=min(args.views, 2), batch_size=16)
    else:
        species = load_species(args.species or args.data / "species.yaml")
        rows = clean_rows(args.data, work, species, params)
    index = label_index(species)
    task = Task(
        y=np.array([index[r["taxon"]] for r in rows]),
        groups=[observation_key(r) for r in rows],
        species=species,
        seed=args.seed,
        cost_ratio=section(params, "finetune", FinetuneConfig).venomous_cost_ratio,
        inner_folds=args.folds,
    )
    folds = grouped_folds(task.y, task.groups, args.folds, args.seed)
    seed_everything(args.seed, True)

    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous = result.get("meta", {})
    settings = {  # what every recipe's numbers depend on: runs accumulate only while they agree
        "photos": len(rows),
        "species": len(species),
        "folds": args.folds,
        "views": data.views,
        "seed": args.seed,
        "venomous_miss_target": MISS_TARGET_BASELINE,  # the "rule" columns
    }
    before = {k: previous.get(k) for k in settings}
    if result.get("recipes") and before != settings:
        changed = [f"{k} {before[k]} -> {v}" for k, v in settings.items() if before[k] != v]
        ap.error(f"{args.out} holds recipes run with other settings ({', '.join(changed)}): "
                 "delete it or choose another --out")  # fmt: skip
    result["meta"] = settings | {
        # the command that reruns everything (results accumulate over runs; --only selects)
        "command": " ".join(["python", "bench/cv.py", *_without_only(sys.argv[1:])]),
        "feature_seconds": previous.get("feature_seconds", {}),
        "adapt": previous.get("adapt", {}),  # the adapted recipes' settings
        "venomous_cost_ratio": task.cost_ratio,  # the pipeline's rule, among the cost columns
    }
    result.setdefault("recipes", {})
    names = [n for n in plan(args) if n not in result["recipes"]]
    ensemble = build_model(ENSEMBLE, len(species), ModelConfig())
    size = max(trunk_sizes(ENSEMBLE, None))
    pooled, secs = features(
        ensemble.prefix(ensemble.depth), rows, species, data, size=size, seed=args.seed,
        path=work / f"pooled_v{data.views}.npy",
    )  # fmt: skip
    if secs:
        result["meta"]["feature_seconds"]["lite0+lite1+lite2 pooled"] = secs
    dims = np.cumsum([0, *(t.dim for t in ensemble.trunks)])
    cols = {f"lite{i}": slice(dims[i], dims[i + 1]) for i in range(3)}

    def columns(b: str) -> np.ndarray:
        return np.concatenate([pooled[..., cols[p]] for p in b.split("+")], -1)

    for name in names:
        b, kind = name.split("/")
        _logger.info("recipe %s", name)
        if kind.startswith("probe_views_adapt_"):  # adapt.backbones=[...] as in params.yaml
            spec, _, vw = kind.removeprefix("probe_views_adapt_").partition("_vw")
            trunks = tuple(f"efficientnet_{t}" for t in spec.split("+"))
            adapt = replace(section(params, "adapt", AdaptConfig), backbones=trunks)
            adapt = replace(adapt, epochs=1) if args.fast else adapt  # a smoke run
            result["meta"].setdefault("adapt", {})[name] = to_dict(adapt)
            recipe = adapted_probe_recipe(
                columns(b), rows, adapt, data, work, c=0.1, venomous_weight=float(vw or 1)
            )
        elif kind.startswith("probe"):
            n = kind.removeprefix("probe_views")[:1]  # probe_views<n>: the first n views
            views = 1 if kind == "probe" else int(n) if n.isdigit() else data.views
            c = float(kind.split("_c")[1]) if "_c" in kind else 0.1
            vw = float(kind.split("_vw")[1]) if "_vw" in kind else 1.0
            recipe = probe_recipe(
                columns(b), views=views, c=c, balanced=kind.endswith("balanced"),
                refit=not kind.endswith("norefit"), venomous_weight=vw,
            )  # fmt: skip
        elif kind == "sgd_head":
            parts = b.split("+")
            net = build_model([f"efficientnet_{p}" for p in parts], len(species), ModelConfig())
            recipe = sgd_recipe(net, columns(b), net.depth, head_sgd, None, data, loss, work)
        else:  # previous default: Lite0 at its native size, 2 fine-tuned blocks
            net = build_model("efficientnet_lite0", len(species), ModelConfig())
            cut = net.cut(ft_prev.unfreeze_blocks)
            spatial, secs = features(
                net.prefix(cut), rows, species, data, size=net.trunks[0].size, seed=args.seed,
                path=work / f"lite0_cut{cut}_v{data.views}.npy",
            )  # fmt: skip
            if secs:
                result["meta"]["feature_seconds"][f"lite0 features[:{cut}]"] = secs
            recipe = sgd_recipe(net, spatial, cut, head_sgd, ft_prev, data, loss, work)
        result["recipes"][name] = cross_validate(task, folds, recipe, name)
        write_json(args.out, result)
        args.out.with_suffix(".md").write_text(markdown(result))
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(markdown(result))


def _ms(stats: dict[str, Any], key: str, pct: bool = False) -> str:
    m, s = stats["mean"][key], stats["sd"][key]
    if m is None or s is None:
        return "—"
    return f"{100 * m:.1f} ± {100 * s:.1f} %" if pct else f"{m:.3f} ± {s:.3f}"


def _rule_cell(r: dict[str, Any], prefix: str) -> str:
    """Venomous missed / harmless passed, mean ± sd in %."""
    missed, flagged = r["mean"][f"{prefix}_missed"], r["mean"][f"{prefix}_flagged_harmless"]
    sd_m, sd_f = r["sd"][f"{prefix}_missed"], r["sd"][f"{prefix}_flagged_harmless"]
    if None in (missed, flagged, sd_m, sd_f):  # folds without venomous (or harmless) photos
        return "—"
    return f"{100 * missed:.1f} ± {100 * sd_m:.1f} / {100 * (1 - flagged):.1f} ± {100 * sd_f:.1f} %"


def _without_only(argv: list[str]) -> list[str]:
    out, skipping = [], False
    for a in argv:
        skipping = a == "--only" or (skipping and not a.startswith("--"))
        if not skipping:
            out.append(a)
    return out


def _row_order(name: str, backbones: list[str]) -> tuple[int, int, str]:
    """Rows by backbone, then probe, probe with views, trained recipes, variants."""
    b, kind = name.split("/")
    kinds = ["probe", "probe_views", "sgd_head", "previous_default"]
    return (
        backbones.index(b) if b in backbones else len(backbones),
        kinds.index(kind) if kind in kinds else len(kinds),
        kind,
    )


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"Grouped {meta['folds']}-fold cross-validation over {meta['photos']} photos of "
        f"{meta['species']} species, {meta['views']} cached views (view 0 = eval transform), "
        f"seed {meta['seed']}; the *rule* columns: the venomous rule fitted to miss at most "
        f"{meta['venomous_miss_target']:g} of the calibration photos' venomous ones (the "
        f"pipeline's rule before `venomous_cost_ratio`): `{meta['command']}`",
        "",
        "| backbone | recipe | macro-F1 | balanced acc. | venomous → harmless "
        "| rule misses venomous | rule flags harmless | s / fold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    backbones = ["lite0", "lite1", "lite2", "lite0+lite2", "lite0+lite1+lite2"]
    for name, r in sorted(result["recipes"].items(), key=lambda i: _row_order(i[0], backbones)):
        b, kind = name.split("/")
        lines.append(
            f"| {b} | {kind} | {_ms(r, 'macro_f1')} | {_ms(r, 'balanced_accuracy')} "
            f"| {_ms(r, 'venomous_as_harmless', True)} | {_ms(r, 'rule_missed', True)} "
            f"| {_ms(r, 'rule_flagged_harmless', True)} | {r['mean']['seconds']:.0f} |"
        )
    costed = {n: r for n, r in result["recipes"].items() if "cost19_missed" in r["mean"]}
    if costed:
        lines += ["", (
            "The venomous rule two ways, on the test folds: fitted to miss none of the "
            "calibration photos' venomous ones (the rule before), and as a Bayes decision with "
            "a stated cost ratio k (warn at calibrated P(venomous) ≥ 1 / (1 + k); the "
            f"pipeline's `finetune.venomous_cost_ratio`, {meta['venomous_cost_ratio']:g}, in "
            "bold). "
            "Venomous photos missed / harmless photos passed with no warning:"
        ), "", "| recipe | miss target 0 | " + " | ".join(
            (f"**k = {k}** (P ≥ {bayes_threshold(k):.3f})" if k == meta["venomous_cost_ratio"]
             else f"k = {k} (P ≥ {bayes_threshold(k):.3f})") for k in COST_RATIOS) + " |",
            "|---|---|" + "---|" * len(COST_RATIOS)]  # fmt: skip
        for name, r in costed.items():
            cells = [_rule_cell(r, "rule")] + [_rule_cell(r, f"cost{k}") for k in COST_RATIOS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, a in meta.get("adapt", {}).items():
        a = a | {"backbones": list(a["backbones"])}  # a tuple before the JSON round trip
        lines += ["", (
            f"`{name}`: as `adapt.backbones: {a['backbones']}` runs in the pipeline. Per fold, "
            f"fine-tuned end to end ({a['epochs']} epochs, peak lr {a['lr']:g}) on the training "
            "photos outside one inner grouped fold, which plays train_head's val photos: the "
            "probe refits on every training photo, and only that fold's out-of-fold logits fit "
            "the temperature and the venomous threshold (never a photo the trunk trained on). "
            "Its seconds per fold include the adaptation and the adapted trunk's feature pass "
            "only where they ran: a rerun reads them back from `--work`."
        )]  # fmt: skip
    lines += ["", "Feature passes (once, shared by every recipe and fold): " + ", ".join(
        f"{k} {v:.0f} s" for k, v in meta["feature_seconds"].items())]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
