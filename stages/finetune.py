"""Stage finetune: unfreeze the last feature block(s) and train them with the classifier, then
fit the softmax temperature and the "possibly venomous" threshold on held-out logits, and the
unknown-species score (`snakeid.model.openset.UnknownScore`) on held-out photos.

With `finetune.enabled: false` the head is the final model and only the calibration runs.

Runs as one process, or as N data-parallel ranks under torchrun (`distributed.nproc`).
"""

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from snakeid.config import load_params, section
from snakeid.model.calibration import calibrate_on_val
from snakeid.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from snakeid.model.models import SnakeNet
from snakeid.model.openset import UnknownScore
from snakeid.model.runtime import resolve_device
from snakeid.stage import run_stage
from snakeid.train import distributed
from snakeid.train.config import (
    FinetuneConfig,
    Setup,
    TrainHeadConfig,
    check_refit,
    finetune_settings,
    fit_spec,
    start_process,
)
from snakeid.train.features import Caches, load_caches, pooled_views
from snakeid.train.head import Holdout
from snakeid.train.live import CURVES, EpochLog
from snakeid.train.loop import train_tail
from snakeid.utils import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, required=True, help="directory with train/val/test.csv")
    ap.add_argument("--head", type=Path, required=True, help="checkpoint from train_head")
    ap.add_argument("--features", type=Path, required=True, help="train_head's feature cache")
    ap.add_argument("--model-out", type=Path, required=True)
    ap.add_argument("--live", type=Path, required=True, help="DVCLive dir: metrics, curves")
    ap.add_argument("--report", type=Path, required=True, help="detailed report (JSON)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    head_cfg = section(params, "train_head", TrainHeadConfig)
    cfg = section(params, "finetune", FinetuneConfig)
    setup = Setup.from_params(params)
    start_process(setup.base)

    model, head_ckpt = load_checkpoint(args.head, setup.species)
    head = head_ckpt.metrics
    log = EpochLog(args.live, "finetune")
    caches = load_caches(
        args.features, split_dir=args.split, base=setup.base, data=setup.data,
        cut=model.cut(cfg.unfreeze_blocks if cfg.enabled else 0), tta_flip=head_ckpt.tta_flip,
        adapt=head_ckpt.params.get("adapt"),
    )  # fmt: skip
    if cfg.enabled:
        model, metrics, held = _finetune(model, caches, head_ckpt, head_cfg, cfg, setup, log)
    else:  # the head is the final model: calibrate it on its own holdout logits
        held = head_ckpt.holdout
        metrics = {"enabled": False} | {k: head[k] for k in CURVES}
    calibration = calibrate_on_val(
        held["logits"].numpy(),
        held["labels"].numpy(),
        setup.species,
        temperature_scaling=cfg.temperature_scaling,
        cost_ratio=cfg.venomous_cost_ratio,
        low_confidence=cfg.low_confidence_threshold,
    )
    unknown = _unknown_score(
        model, caches, held, calibration["temperature"], cfg, resolve_device(setup.base.device)
    )
    metrics |= {
        "calibrated_on": held["source"],
        "calibration": calibration,
        "unknown_score": unknown.describe() | {"fitted_on": held["source"]},
        "pretrained": head["pretrained"],
        "head_val_macro_f1": head["val_macro_f1"],
    }
    if not distributed.is_main():  # under torchrun, rank 0 alone writes the outputs
        return
    save_checkpoint(
        args.model_out,
        model,
        species=setup.species,
        preprocess=head_ckpt.preprocess,
        tta_flip=head_ckpt.tta_flip,
        params=head_ckpt.params | setup.provenance(finetune=cfg),
        stage="finetune",
        metrics=metrics,
        calibration=calibration,
        openset=unknown.state(),
    )
    write_json(args.report, metrics)
    # headline: the final model's val scores (the head's when finetune is off: no epochs logged)
    log.finish({k: metrics[k] for k in CURVES})


def _unknown_score(
    model: SnakeNet,
    caches: Caches,
    held: dict[str, Any],
    temperature: float,
    cfg: FinetuneConfig,
    device: str,
) -> UnknownScore:
    """Fit the unknown-species score on the photos the calibration used: the out-of-fold
    photos of a refitted probe (`rows` of train+val, each against the bank photos of the other
    folds), else the val photos against the train photos. The bank of the deployed score is the
    photos the classifier trained on."""
    train, val = pooled_views(model, caches, device)  # (V, N, D)
    logits = held["logits"].numpy() / temperature  # calibrated, as the deployed model's
    if held["folds"] is not None:
        every = np.concatenate([train, val], axis=1)
        folds, rows = held["folds"].numpy(), held["rows"].numpy()
        bank, held_x, bank_folds, held_folds = every, every[0, rows], folds, folds[rows]
    else:
        bank, held_x = train, val[0]
        bank_folds, held_folds = np.full(train.shape[1], -1), np.zeros(val.shape[1], int)
    return UnknownScore.fit(
        bank, held_x, logits, bank_folds=bank_folds, held_folds=held_folds,
        known_pass_rate=cfg.known_pass_rate,
    )  # fmt: skip


def _finetune(
    model: SnakeNet,
    caches: Caches,
    head_ckpt: Checkpoint,
    head_cfg: TrainHeadConfig,
    cfg: FinetuneConfig,
    setup: Setup,
    log: EpochLog,
) -> tuple[SnakeNet, dict[str, Any], dict[str, Any]]:
    """Train the last blocks on the cached features: (model, metrics, val holdout)."""
    head_params = head_ckpt.params["train_head"]
    check_refit(refit=bool(head_params.get("refit")), method=head_params.get("method", "probe"),
                finetune_enabled=True)  # fmt: skip
    fit = fit_spec(cfg, setup, **finetune_settings(head_cfg, cfg, setup.base.seed))
    result = train_tail(
        model, cfg.unfreeze_blocks, caches, base=setup.base, data=setup.data, fit=fit,
        stage="finetune", log=log,
    )  # fmt: skip
    held = Holdout(result.fit.val_logits, result.val_labels, "val").state()
    metrics = result.metrics | {"enabled": True, "lr": fit.lr}
    return result.model, metrics, held


if __name__ == "__main__":
    run_stage(main)
