"""BASELINE, NOT THE PROJECT'S TRAINING CODE: the original study's training loop.

`bench/speed.py` runs this as a subprocess beside the real `train_head` / `finetune` stages and
compares wall time and val macro-F1. It is what a typical transfer-learning tutorial does:

- the whole model in `model.train()` mode, frozen parameters marked `requires_grad=False`;
- every epoch, the full backbone forward on freshly augmented photos from a DataLoader
  (the project's train transform, so both loops see the same augmentation policy);
- AdamW at a constant lr on the classifier (`head`) or the last block(s) + classifier
  (`finetune`); val after every epoch through the eval transform; the best epoch by the val
  metric is kept.

Same split, epochs, lr, weight decay, loss options and seed as the stage it is compared with
(read from the same params file). Because the frozen part runs in train mode, its BatchNorm
running statistics drift although its weights do not: `frozen_bn_buffers_changed` reports it.

    python bench/study_loop.py --stage train_head --split data/split --out study_head.json
    python bench/study_loop.py --stage finetune --split data/split --head models/head.pt \
        --out study_finetune.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from snakeid.config import load_params, section
from snakeid.data.dataset import SplitDataset, eval_transform, train_transform
from snakeid.model.checkpoint import load_checkpoint
from snakeid.model.metrics import balanced_accuracy, macro_f1
from snakeid.model.models import ModelConfig, SnakeNet, build_model
from snakeid.model.runtime import worker_seed
from snakeid.train.config import (
    FinetuneConfig,
    Setup,
    TrainHeadConfig,
    class_weights,
    finetune_settings,
    start_process,
)
from snakeid.utils import setup_logging

_logger = logging.getLogger("study_loop")


def frozen_buffers(model: SnakeNet, unfreeze_blocks: int) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics of the part that is supposed to stay frozen."""
    prefix, _ = model.split(unfreeze_blocks)
    return {k: v.detach().clone() for k, v in prefix.named_buffers()}


def run(
    model: SnakeNet,
    unfreeze_blocks: int,
    *,
    split_dir: Path,
    setup: Setup,
    epochs: int,
    lr: float,
    weight_decay: float,
    select_metric: str,
    seed: int,
) -> dict:
    base, data = setup.base, setup.data
    size = base.image_size
    augment = train_transform(size, augment=data.augment, random_erasing=data.random_erasing)
    train_ds = SplitDataset.from_csv(split_dir / "train.csv", setup.species, augment)
    val_ds = SplitDataset.from_csv(split_dir / "val.csv", setup.species, eval_transform(size))
    train_y, val_y = np.array(train_ds.labels), np.array(val_ds.labels)
    labels = np.unique(val_y)
    loader = DataLoader(
        train_ds,
        batch_size=data.batch_size,
        shuffle=True,
        num_workers=data.workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=worker_seed,
    )
    val_loader = DataLoader(val_ds, batch_size=data.batch_size, num_workers=data.workers)

    trainable = model.trainable_parameters(unfreeze_blocks)
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    bn_before = frozen_buffers(model, unfreeze_blocks)
    weights = class_weights(np.bincount(train_y, minlength=len(setup.species)), setup.loss)
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=setup.loss.label_smoothing)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)

    history, best, best_epoch, best_state = [], -math.inf, 0, None
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()  # the study's loop: frozen BatchNorm layers update their statistics too
        total_loss = 0.0
        for x, y in loader:
            logits = model(x)  # (B, C): the full backbone forward, every epoch
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(y)
        t1 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            pred = np.concatenate([model(x).argmax(1).numpy() for x, _ in val_loader])
        t2 = time.perf_counter()
        row = {
            "epoch": epoch,
            "train_loss": total_loss / len(train_ds),
            "val_accuracy": float((pred == val_y).mean()),
            "val_macro_f1": macro_f1(val_y, pred, labels),
            "val_balanced_accuracy": balanced_accuracy(val_y, pred, labels),
            "train_s": t1 - t0,
            "val_s": t2 - t1,
        }
        history.append(row)
        _logger.info(
            "epoch %d: loss %.3f, val macro-F1 %.4f, %.1f img/s",
            epoch,
            row["train_loss"],
            row["val_macro_f1"],
            len(train_ds) / row["train_s"],
        )
        if row[f"val_{select_metric}"] > best:  # strict, like fit_tail: ties keep the earlier
            best, best_epoch = row[f"val_{select_metric}"], epoch
            best_state = copy.deepcopy(model.state_dict())
    core_s = time.perf_counter() - started
    assert best_state is not None
    bn_after = frozen_buffers(model, unfreeze_blocks)
    changed = [k for k in bn_before if not torch.equal(bn_before[k], bn_after[k])]
    best_row = history[best_epoch - 1]
    return {
        "loop": "study (backbone forward every epoch, model.train())",
        "epochs": epochs,
        "best_epoch": best_epoch,
        "val_macro_f1": best_row["val_macro_f1"],
        "val_accuracy": best_row["val_accuracy"],
        "val_balanced_accuracy": best_row["val_balanced_accuracy"],
        "core_s": core_s,  # all epochs, train + val, excluding start-up and model loading
        "train_s": sum(r["train_s"] for r in history),
        "val_s": sum(r["val_s"] for r in history),
        "n_train": len(train_ds),
        "n_val": len(val_ds),
        "frozen_bn_buffers_changed": bool(changed),
        "frozen_bn_buffers_changed_count": len(changed),
        "frozen_bn_buffers": len(bn_before),
        "history": history,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("train_head", "finetune"), required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--head", type=Path, help="finetune: the train_head checkpoint to start from")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    setup_logging()

    params = load_params(args.params)
    head_cfg = section(params, "train_head", TrainHeadConfig)
    setup = Setup.from_params(params)
    start_process(setup.base)  # seeds and sets threads before the model is built, as the stages do
    if args.stage == "train_head":
        model_cfg = section(params, "model", ModelConfig)
        model = build_model(setup.base.backbone, len(setup.species), model_cfg)
        unfreeze, epochs, lr, seed = 0, head_cfg.epochs, head_cfg.lr, setup.base.seed
        wd, metric = head_cfg.weight_decay, head_cfg.select_metric
    else:
        if args.head is None:
            ap.error("--head is required with --stage finetune")
        cfg = section(params, "finetune", FinetuneConfig)
        model, _ = load_checkpoint(args.head, setup.species)
        unfreeze = cfg.unfreeze_blocks
        rule = finetune_settings(head_cfg, cfg, setup.base.seed)  # the finetune stage's rule
        epochs, lr, seed = rule["epochs"], rule["lr"], rule["seed"]
        wd, metric = cfg.weight_decay, cfg.select_metric
    result = run(
        model,
        unfreeze,
        split_dir=args.split,
        setup=setup,
        epochs=epochs,
        lr=lr,
        weight_decay=wd,
        select_metric=metric,
        seed=seed,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result | {"lr": lr, "unfreeze_blocks": unfreeze}, indent=2))


if __name__ == "__main__":
    main()
