"""Stage train_head: train the classifier on a frozen, ImageNet-pretrained backbone.

The frozen backbone runs once per training photo and augmentation view, up to where `finetune`
will unfreeze blocks; those features are saved (`--features`) and both stages train on them.
Runs as one process, or as N data-parallel ranks under torchrun (`distributed.nproc`).
"""

import argparse
import logging
from pathlib import Path

from snakeid import distributed
from snakeid.config import load_params, section
from snakeid.data import eval_preprocess_spec
from snakeid.models import ModelConfig, build_model, save_checkpoint
from snakeid.stage import run_stage
from snakeid.train import (
    FinetuneConfig,
    TrainHeadConfig,
    cache_features,
    fit_spec,
    prepare,
    train_tail,
)
from snakeid.utils import write_csv, write_json

_logger = logging.getLogger("train_head")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, required=True, help="directory with train/val/test.csv")
    ap.add_argument("--features", type=Path, required=True, help="frozen-feature cache (output)")
    ap.add_argument("--model-out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--plot", type=Path, required=True, help="per-epoch curves (CSV)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    model_cfg = section(params, "model", ModelConfig)
    cfg = section(params, "train_head", TrainHeadConfig)
    finetune = section(params, "finetune", FinetuneConfig)
    setup = prepare(params)
    base = setup.base

    model = build_model(base.backbone, len(setup.species), model_cfg)
    caches = cache_features(
        model,
        model.cut(finetune.unfreeze_blocks),
        args.features,
        split_dir=args.split,
        species=setup.species,
        base=base,
        data=setup.data,
    )
    fit = fit_spec(cfg, setup, epochs=cfg.epochs, lr=cfg.lr, seed=base.seed)
    result = train_tail(model, 0, caches, base=base, data=setup.data, fit=fit, stage="train_head")
    metrics = result.metrics | {"pretrained": model_cfg.pretrained}
    if not model_cfg.pretrained:
        metrics["warning"] = "backbone NOT pretrained: random features, expect poor accuracy"
        _logger.warning(metrics["warning"])
    if not distributed.is_main():  # under torchrun, rank 0 alone writes the outputs
        return
    save_checkpoint(
        args.model_out,
        result.model,
        species=setup.species,
        backbone=base.backbone,
        image_size=base.image_size,
        preprocess=eval_preprocess_spec(base.image_size),
        params=setup.provenance(model=model_cfg, train_head=cfg),
        stage="train_head",
        metrics=metrics,
    )
    write_json(args.metrics, metrics)
    write_csv(args.plot, result.fit.history)


if __name__ == "__main__":
    run_stage(main)
