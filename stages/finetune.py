"""Stage finetune: unfreeze the last feature block(s) and train them with the classifier, then
fit the softmax temperature and the "possibly venomous" threshold on held-out logits.

With `finetune.enabled: false` the head is the final model and only the calibration runs.

Runs as one process, or as N data-parallel ranks under torchrun (`distributed.nproc`).
"""

import argparse
from pathlib import Path
from typing import Any

from snakeid import distributed
from snakeid.calibration import calibrate_on_val
from snakeid.config import load_params, section
from snakeid.models import SnakeNet, load_checkpoint, save_checkpoint
from snakeid.stage import UserError, run_stage
from snakeid.train import (
    PLOT_COLUMNS,
    FinetuneConfig,
    Setup,
    TrainHeadConfig,
    finetune_settings,
    fit_spec,
    load_caches,
    prepare,
    train_tail,
)
from snakeid.utils import write_csv, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, required=True, help="directory with train/val/test.csv")
    ap.add_argument("--head", type=Path, required=True, help="checkpoint from train_head")
    ap.add_argument("--features", type=Path, required=True, help="train_head's feature cache")
    ap.add_argument("--model-out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--plot", type=Path, required=True, help="per-epoch curves (CSV)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    head_cfg = section(params, "train_head", TrainHeadConfig)
    cfg = section(params, "finetune", FinetuneConfig)
    setup = prepare(params)

    model, head_ckpt = load_checkpoint(args.head, setup.species)
    if not cfg.enabled:
        _calibrate_head(args, model, head_ckpt, cfg, setup)
        return
    if head_ckpt["params"]["train_head"].get("refit"):
        raise UserError(
            "the head was refitted on train+val (train_head.refit); finetune would choose its "
            "epoch on photos the head trained on: set train_head.refit: false"
        )
    fit = fit_spec(cfg, setup, **finetune_settings(head_cfg, cfg, setup.base.seed))
    caches = load_caches(
        args.features,
        split_dir=args.split,
        base=setup.base,
        data=setup.data,
        cut=model.cut(cfg.unfreeze_blocks),
    )
    result = train_tail(
        model, cfg.unfreeze_blocks, caches, base=setup.base, data=setup.data, fit=fit,
        stage="finetune",
    )  # fmt: skip
    calibration = calibrate_on_val(
        result.fit.val_logits,
        result.val_labels,
        setup.species,
        temperature_scaling=cfg.temperature_scaling,
        miss_target=cfg.venomous_miss_target,
    )
    metrics = result.metrics | {
        "enabled": True,
        "calibration": calibration,
        "lr": fit.lr,
        "pretrained": head_ckpt["metrics"]["pretrained"],
        "head_val_macro_f1": head_ckpt["metrics"]["val_macro_f1"],
    }
    if not distributed.is_main():  # under torchrun, rank 0 alone writes the outputs
        return
    save_checkpoint(
        args.model_out,
        result.model,
        species=setup.species,
        preprocess=head_ckpt["preprocess"],
        params=head_ckpt["params"] | setup.provenance(finetune=cfg),
        stage="finetune",
        metrics=metrics,
        calibration=calibration,
    )
    write_json(args.metrics, metrics)
    write_csv(args.plot, result.fit.history)


def _calibrate_head(
    args: argparse.Namespace,
    model: SnakeNet,
    head_ckpt: dict[str, Any],
    cfg: FinetuneConfig,
    setup: Setup,
) -> None:
    """`finetune.enabled: false`: the head is the final model; fit its temperature and venomous
    threshold on the head's holdout logits (val, or out-of-fold train+val after a refit)."""
    holdout = head_ckpt["holdout"]
    calibration = calibrate_on_val(
        holdout["logits"].numpy(),
        holdout["labels"].numpy(),
        setup.species,
        temperature_scaling=cfg.temperature_scaling,
        miss_target=cfg.venomous_miss_target,
    )
    head = head_ckpt["metrics"]
    metrics = {
        "enabled": False,
        "val_macro_f1": head["val_macro_f1"],  # the head's: nothing more was trained
        "calibrated_on": holdout["source"],
        "calibration": calibration,
        "pretrained": head["pretrained"],
        "head_val_macro_f1": head["val_macro_f1"],
    }
    if not distributed.is_main():
        return
    save_checkpoint(
        args.model_out,
        model,
        species=setup.species,
        preprocess=head_ckpt["preprocess"],
        params=head_ckpt["params"] | setup.provenance(finetune=cfg),
        stage="finetune",
        metrics=metrics,
        calibration=calibration,
    )
    write_json(args.metrics, metrics)
    write_csv(args.plot, [], fieldnames=PLOT_COLUMNS)  # no epochs: an empty curve


if __name__ == "__main__":
    run_stage(main)
