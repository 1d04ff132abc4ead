"""Stage train_head: train the classifier on a frozen, ImageNet-pretrained backbone.

First, if `adapt.backbones` names any, those trunks are fine-tuned end to end on the train photos
(`snakeid.train.adapt`); from then on they are frozen like the others. The val photos stay unseen
by them, and then only the val photos calibrate (see `snakeid.train.head.Holdout`).
The frozen backbone(s) run once per training photo and view, up to where `finetune` will
unfreeze blocks (pooled features when it trains none); those features are saved (`--features`)
and both stages train on them. The head is a linear probe (default) or trained by AdamW.
Runs as one process, or as N data-parallel ranks under torchrun (`distributed.nproc`).
"""

import argparse
import logging
from pathlib import Path

from snakeid.config import load_params, section, to_dict
from snakeid.data.dataset import eval_preprocess_spec
from snakeid.data.manifest import read_manifest
from snakeid.model.checkpoint import save_checkpoint
from snakeid.model.models import (
    ModelConfig,
    backbone_list,
    build_model,
    trunk_sizes,
)
from snakeid.model.runtime import resolve_device
from snakeid.stage import run_stage
from snakeid.train import distributed
from snakeid.train.adapt import adapt_trunks
from snakeid.train.config import (
    AdaptConfig,
    FinetuneConfig,
    Setup,
    TrainHeadConfig,
    check_refit,
    fit_spec,
    probe_balance,
    start_process,
)
from snakeid.train.features import cache_features
from snakeid.train.head import Holdout, train_probe
from snakeid.train.live import CURVES, EpochLog
from snakeid.train.loop import train_tail
from snakeid.utils import write_json

_logger = logging.getLogger("train_head")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, required=True, help="directory with train/val/test.csv")
    ap.add_argument("--features", type=Path, required=True, help="frozen-feature cache (output)")
    ap.add_argument("--model-out", type=Path, required=True)
    ap.add_argument("--live", type=Path, required=True, help="DVCLive dir: metrics, curves")
    ap.add_argument("--report", type=Path, required=True, help="detailed report (JSON)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    model_cfg = section(params, "model", ModelConfig)
    cfg = section(params, "train_head", TrainHeadConfig)
    finetune = section(params, "finetune", FinetuneConfig)
    adapt = section(params, "adapt", AdaptConfig)
    setup = Setup.from_params(params)
    start_process(setup.base)
    base = setup.base
    backbones = backbone_list(base.backbone)
    check_refit(refit=cfg.refit, method=cfg.method, finetune_enabled=finetune.enabled)
    balanced = probe_balance(setup.data, setup.loss) if cfg.method == "probe" else False

    sizes = trunk_sizes(backbones, base.image_size)
    model = build_model(backbones, len(setup.species), model_cfg, sizes=sizes)
    adapted = None
    if adapt.backbones:  # on the train photos only: no calibration may read a photo a
        # trunk trained on, so the val photos stay unseen by it even when the probe refits
        rows = read_manifest(args.split / "train.csv")
        adapted = adapt_trunks(model, rows, setup.species, adapt, data=setup.data,
                               seed=base.seed, device=resolve_device(base.device))  # fmt: skip
    caches = cache_features(
        model,
        model.cut(finetune.unfreeze_blocks if finetune.enabled else 0),
        args.features,
        split_dir=args.split,
        species=setup.species,
        base=base,
        data=setup.data,
        tta_flip=model_cfg.tta_flip,
        adapt=to_dict(adapt),
    )
    log = EpochLog(args.live, "train_head")
    if cfg.method == "probe":
        metrics, holdout = train_probe(model, caches, cfg, balanced=balanced, seed=base.seed,
                                       trunk_saw_train=bool(adapt.backbones))  # fmt: skip
        log.epoch({"epoch": 1} | metrics)  # one fit: one step
    else:
        fit = fit_spec(cfg, setup, epochs=cfg.epochs, lr=cfg.lr, seed=base.seed)
        result = train_tail(
            model, 0, caches, base=base, data=setup.data, fit=fit, stage="train_head", log=log
        )
        metrics = {"method": "sgd"} | result.metrics
        holdout = Holdout(result.fit.val_logits, result.val_labels, "val")
    metrics |= {"pretrained": model_cfg.pretrained}
    if adapted is not None:
        metrics["adapt"] = adapted
    if not model_cfg.pretrained:
        metrics["warning"] = "backbone NOT pretrained: random features, expect poor accuracy"
        _logger.warning(metrics["warning"])
    if not distributed.is_main():  # under torchrun, rank 0 alone writes the outputs
        return
    save_checkpoint(
        args.model_out,
        model,
        species=setup.species,
        preprocess=eval_preprocess_spec(model.input_size),
        tta_flip=model_cfg.tta_flip,
        params=setup.provenance(
            model={k: getattr(model_cfg, k) for k in ("pretrained", "weights_path", "dropout")},
            train_head=cfg,
            adapt=adapt,
        ),
        stage="train_head",
        metrics=metrics,
        holdout=holdout.state(),
    )
    write_json(args.report, metrics)
    # headline: the selected fit's curves, plus the out-of-fold score of a refitted probe
    log.finish({k: metrics[k] for k in (*CURVES, "oof_macro_f1") if k in metrics})


if __name__ == "__main__":
    run_stage(main)
