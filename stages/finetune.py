"""Stage finetune: unfreeze the last feature block(s) and train them with the classifier.

Runs as one process, or as N data-parallel ranks under torchrun (`distributed.nproc`).
"""

import argparse
from pathlib import Path

from snakeid import distributed
from snakeid.calibration import calibrate_on_val
from snakeid.config import load_params, section
from snakeid.models import load_checkpoint, save_checkpoint
from snakeid.stage import run_stage
from snakeid.train import (
    FinetuneConfig,
    TrainHeadConfig,
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
    fit = fit_spec(
        cfg,
        setup,
        epochs=cfg.epochs or max(2, head_cfg.epochs // 2),
        lr=head_cfg.lr * cfg.lr_scale,
        seed=setup.base.seed + 1,  # a different epoch order from the head stage
    )
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
        backbone=head_ckpt["backbone"],
        image_size=head_ckpt["image_size"],
        preprocess=head_ckpt["preprocess"],
        params=head_ckpt["params"] | setup.provenance(finetune=cfg),
        stage="finetune",
        metrics=metrics,
        calibration=calibration,
    )
    write_json(args.metrics, metrics)
    write_csv(args.plot, result.fit.history)


if __name__ == "__main__":
    run_stage(main)
