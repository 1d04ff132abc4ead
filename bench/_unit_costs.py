"""Per-image cost of each kind of work the two training loops do, measured interleaved.

The end-to-end runs (a real stage, then the study's loop) take minutes each, one after the
other, and on a shared 2-core machine the load from other processes changes between them, so
their wall-time ratio is biased by whoever else was running. Here one batch of each kind of
work runs per round, in a shuffled order, for several rounds; the medians are per-image costs
that saw the same load. The stage times are then rebuilt from the real runs' counts, following
what `snakeid.train` does (features cached once at finetune's cut by `train_head`):

    study train_head = E_h × (n_train × study_head_train + n_val × study_val)
    study finetune   = E_f × (n_train × study_finetune_train + n_val × study_val)
    ours train_head  = (views × n_train + n_val) × (ours_features + ours_middle)
                       + E_h × n_train × ours_head_tail
    ours finetune    = E_f × (n_train × ours_finetune_tail + n_val × ours_finetune_val)

`ours_features` is the frozen `features[:cut]` on one augmented photo (decode included) as the
pipeline runs it on the CPU (an FP32 ONNX export in ONNX Runtime, `data.feature_engine`),
`ours_features_torch` the same in eager PyTorch (channels_last, inference mode: the
alternative), `ours_middle` the frozen blocks between the cut and the pooled features, run once
over the cache, and the `*_tail` costs one training step of the trainable part on cached
features. The ONNX Runtime session does not spin-wait between runs, so it takes no CPU from
the work measured after it.
"""

from __future__ import annotations

import copy
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from snakeid.contract import INPUT_NAME, OUTPUT_NAME
from snakeid.model.models import SnakeNet
from snakeid.model.onnx_export import export_onnx
from snakeid.model.onnxio import ort_session


def _batches(ds: Dataset, batch_size: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Successive batches, decoded and transformed in this process (DataLoader workers=0)."""
    state = {"i": 0}

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = [(state["i"] + k) % len(ds) for k in range(batch_size)]
        state["i"] += batch_size
        items = [ds[i] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    return next_batch


def _trainable(model: SnakeNet, unfreeze_blocks: int, lr: float) -> torch.optim.Optimizer:
    params = model.trainable_parameters(unfreeze_blocks)
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return torch.optim.AdamW(params, lr=lr)


def measure(
    pretrained: SnakeNet,
    head: SnakeNet,
    unfreeze_blocks: int,
    train_ds: Dataset,
    val_ds: Dataset,
    *,
    batch_size: int,
    head_lr: float,
    finetune_lr: float,
    rounds: int,
    image_size: int,
    scratch: Path,
    seed: int = 0,
) -> dict[str, float]:
    """Median seconds per image of every kind of work in the formulas above, plus
    `ours_features_torch`: the alternative extractor, the same frozen prefix in eager PyTorch."""
    torch.manual_seed(seed)
    ce = nn.CrossEntropyLoss()
    n_classes = pretrained.classifier.out_features
    cut = pretrained.cut(unfreeze_blocks)

    # The study's loop: contiguous tensors, model.train(), frozen parts requires_grad=False.
    study_h, study_f = copy.deepcopy(pretrained), copy.deepcopy(head)
    opt_sh, opt_sf = (
        _trainable(study_h, 0, head_lr),
        _trainable(study_f, unfreeze_blocks, finetune_lr),
    )
    # Ours: the channels_last frozen prefix in inference mode, the rest on cached features.
    prefix = copy.deepcopy(pretrained).to(memory_format=torch.channels_last).eval().features[:cut]
    ours_h = copy.deepcopy(pretrained).eval()
    middle, head_tail = ours_h.frozen_between(cut, 0), ours_h.split(0)[1]
    opt_oh = _trainable(ours_h, 0, head_lr)
    ours_f = copy.deepcopy(head)
    ft_tail = ours_f.split(unfreeze_blocks)[1]
    opt_of = _trainable(ours_f, unfreeze_blocks, finetune_lr)

    onnx_prefix = scratch / "prefix.onnx"
    export_onnx(copy.deepcopy(pretrained).features[:cut], onnx_prefix, image_size, opset=17)
    session = ort_session(onnx_prefix, torch.get_num_threads(), spin=False)  # as the pipeline

    train_batch, val_batch = _batches(train_ds, batch_size), _batches(val_ds, batch_size)
    cache: dict[str, torch.Tensor] = {}

    def step(module: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
        module.train()  # the study: the whole model; ours: the trainable tail only
        loss = ce(module(x), torch.randint(0, n_classes, (len(x),)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def study_head_train() -> None:
        step(study_h, opt_sh, train_batch()[0])

    def study_finetune_train() -> None:
        step(study_f, opt_sf, train_batch()[0])

    def study_val() -> None:
        x, _ = val_batch()
        study_h.eval()
        with torch.no_grad():
            study_h(x)

    def ours_features() -> None:
        x, _ = train_batch()
        f = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        cache["maps"] = torch.from_numpy(f.astype(np.float16))  # as cached

    def ours_features_torch() -> None:
        x, _ = train_batch()
        with torch.inference_mode():
            f = prefix(x.contiguous(memory_format=torch.channels_last))
            cache["maps_torch"] = torch.from_numpy(f.float().numpy().astype(np.float16))

    def ours_middle() -> None:
        with torch.inference_mode():
            z = middle(cache["maps"].float())  # (B, feature_dim)
        cache["pooled"] = torch.from_numpy(z.numpy().astype(np.float16))

    def ours_head_tail() -> None:
        step(head_tail, opt_oh, cache["pooled"].float())

    def ours_finetune_tail() -> None:
        step(ft_tail, opt_of, cache["maps"].float())

    def ours_finetune_val() -> None:
        ft_tail.eval()
        with torch.no_grad():
            ft_tail(cache["maps"].float())

    heavy: dict[str, Callable[[], None]] = {
        "study_head_train": study_head_train,
        "study_finetune_train": study_finetune_train,
        "study_val": study_val,
        "ours_features_torch": ours_features_torch,
    }
    ours_steps: dict[str, Callable[[], None]] = {
        "ours_features": ours_features,  # fills the cache the next four read
        "ours_middle": ours_middle,
        "ours_head_tail": ours_head_tail,
        "ours_finetune_tail": ours_finetune_tail,
        "ours_finetune_val": ours_finetune_val,
    }
    for fn in [*heavy.values(), *ours_steps.values()]:  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in [*heavy, *ours_steps]}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = [*heavy, "ours"]
        rng.shuffle(order)
        for name in order:
            for k, fn in ours_steps.items() if name == "ours" else [(name, heavy[name])]:
                t = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t) / batch_size)
    return {k: statistics.median(v) for k, v in times.items()}


def head_times(
    c: dict[str, float], *, epochs: int, views: int, n_train: int, n_val: int,
    extractor: str = "ours_features",
) -> dict[str, float]:  # fmt: skip
    """train_head seconds of both loops (`extractor`: the per-image cost of the frozen prefix)."""
    study = epochs * (n_train * c["study_head_train"] + n_val * c["study_val"])
    ours = (views * n_train + n_val) * (c[extractor] + c["ours_middle"])
    ours += epochs * n_train * c["ours_head_tail"]
    return {"study_s": study, "ours_s": ours, "speedup": study / ours}


def finetune_times(
    c: dict[str, float], *, epochs: int, views: int, n_train: int, n_val: int
) -> dict[str, float]:
    """finetune seconds of both loops (ours reads train_head's cache: no extraction)."""
    del views  # each epoch visits every photo once, through one of its cached views
    study = epochs * (n_train * c["study_finetune_train"] + n_val * c["study_val"])
    ours = epochs * (n_train * c["ours_finetune_tail"] + n_val * c["ours_finetune_val"])
    return {"study_s": study, "ours_s": ours, "speedup": study / ours}


def summary(costs: dict[str, float], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {
        "seconds_per_image": costs,
        "train_head": {"counts": counts["train_head"]} | head_times(costs, **counts["train_head"]),
        "finetune": {"counts": counts["finetune"]} | finetune_times(costs, **counts["finetune"]),
    }
