"""The training stages' configs, the imbalance policy and the shared set-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from snakeid.config import BaseConfig, base_config, section, spec, to_dict
from snakeid.contract import DEFAULT_LOW_CONFIDENCE
from snakeid.data.dataset import DataConfig
from snakeid.data.split import model_species
from snakeid.errors import UserError
from snakeid.model.runtime import resolve_device, seed_everything
from snakeid.taxa import Species, load_species
from snakeid.train import distributed

_logger = logging.getLogger(__name__)

METRICS = ("macro_f1", "accuracy", "balanced_accuracy")


@dataclass(frozen=True)
class LossConfig:
    class_weighting: str = field(
        default="none",
        metadata=spec(choices=("none", "inverse", "sqrt_inverse", "effective_number")),
    )
    beta: float = field(default=0.999, metadata=spec(gt=0.0, lt=1.0))  # effective_number only
    label_smoothing: float = field(default=0.0, metadata=spec(ge=0.0, lt=1.0))
    # Logit adjustment (Menon et al., 2021): train on logits + tau·log(prior), predict with
    # plain logits. 0 = off.
    logit_adjustment: float = field(default=0.0, metadata=spec(ge=0.0))
    force: bool = False  # allow stacking two imbalance corrections


SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainHeadConfig:
    # probe: L2-regularised logistic regression on standardised pooled features
    # (snakeid.model.probe),
    # solved to convergence; sgd: AdamW over `epochs`, best epoch on val.
    method: str = field(default="probe", metadata=spec(choices=("probe", "sgd")))
    probe_c: float = field(default=0.1, metadata=spec(gt=0.0))  # inverse L2 strength
    # probe: fit the final head on train+val; temperature and venomous threshold then come from
    # out-of-fold logits (grouped k-fold over train+val), never from photos the head saw.
    refit: bool = True
    refit_folds: int = field(default=5, metadata=spec(ge=2))
    epochs: int = field(default=20, metadata=spec(ge=1))
    lr: float = field(default=1e-3, metadata=spec(gt=0.0))
    weight_decay: float = field(default=0.01, metadata=spec(ge=0.0))
    select_metric: str = field(default="macro_f1", metadata=spec(choices=METRICS))
    schedule: str = field(default="constant", metadata=spec(choices=SCHEDULES))
    warmup_epochs: int = field(default=0, metadata=spec(ge=0))
    ema_decay: float = field(default=0.0, metadata=spec(ge=0.0, lt=1.0))  # 0 = no EMA


@dataclass(frozen=True)
class AdaptConfig:
    """Backbones `train_head` fine-tunes end to end before it caches their features
    (`snakeid.train.adapt`): on the photos the head then fits on, with live augmentation and a
    temporary linear head, AdamW on a one-cycle schedule. None listed: frozen ImageNet features."""

    backbones: tuple[str, ...] = ()
    epochs: int = field(default=4, metadata=spec(ge=1))
    lr: float = field(default=3e-4, metadata=spec(gt=0.0))  # the peak; the temporary head's is 10x
    weight_decay: float = field(default=1e-4, metadata=spec(ge=0.0))
    label_smoothing: float = field(default=0.1, metadata=spec(ge=0.0, lt=1.0))


@dataclass(frozen=True)
class FinetuneConfig:
    # false: the head is the final model (finetune only calibrates it); on real photos training
    # blocks did not beat the linear probe (bench/cv.md)
    enabled: bool = False
    epochs: int | None = field(default=None, metadata=spec(ge=1))  # None: max(2, head epochs // 2)
    unfreeze_blocks: int = field(default=2, metadata=spec(ge=0))
    lr_scale: float = field(default=1.0, metadata=spec(gt=0.0))
    # Discriminative learning rates: block k below the classifier trains at lr · decay^k.
    layer_lr_decay: float = field(default=1.0, metadata=spec(gt=0.0, le=1.0))
    weight_decay: float = field(default=0.01, metadata=spec(ge=0.0))
    select_metric: str = field(default="macro_f1", metadata=spec(choices=METRICS))
    schedule: str = field(default="constant", metadata=spec(choices=SCHEDULES))
    warmup_epochs: int = field(default=0, metadata=spec(ge=0))
    ema_decay: float = field(default=0.0, metadata=spec(ge=0.0, lt=1.0))
    # Post-hoc calibration on the val split, carried by the checkpoint into the exported model.
    temperature_scaling: bool = True
    # "Possibly venomous" when the calibrated P(any venomous species) ≥ 1 / (1 + this): what
    # missing a venomous snake costs against a needless warning (a Bayes decision). At least 1.
    venomous_cost_ratio: float = field(default=49.0, metadata=spec(ge=1.0))
    # "The model is not sure" (so never `harmless`) when the top-1 probability is under this.
    low_confidence_threshold: float = field(
        default=DEFAULT_LOW_CONFIDENCE, metadata=spec(ge=0.0, le=1.0)
    )
    # "Not one of the species this model knows" above an unknown-species score threshold chosen
    # on the same held-out photos so that this share of them (all of known species) pass.
    known_pass_rate: float = field(default=0.95, metadata=spec(gt=0.0, le=1.0))


@dataclass(frozen=True)
class FitSpec:
    """What one training run does, independent of which stage asked for it."""

    epochs: int
    lr: float
    weight_decay: float
    select_metric: str
    batch_size: int
    sampler: str
    loss: LossConfig
    seed: int
    schedule: str = "constant"
    warmup_epochs: int = 0
    ema_decay: float = 0.0
    layer_lr_decay: float = 1.0


def check_imbalance_options(data: DataConfig, loss: LossConfig) -> None:
    """Refuse stacking imbalance corrections: each alone already rebalances the classes."""
    on = [
        name
        for name, active in (
            ("data.sampler: balanced", data.sampler == "balanced"),
            (f"loss.class_weighting: {loss.class_weighting}", loss.class_weighting != "none"),
            (f"loss.logit_adjustment: {loss.logit_adjustment}", loss.logit_adjustment > 0),
        )
        if active
    ]
    if len(on) > 1 and not loss.force:
        raise UserError(
            f"{' together with '.join(on)} over-corrects the imbalance; pick one "
            "(or set loss.force: true)"
        )


def class_weights(counts: np.ndarray, cfg: LossConfig) -> torch.Tensor | None:
    """Per-class loss weights, normalised to mean 1 over classes present in training."""
    if cfg.class_weighting == "none":
        return None
    n = np.maximum(counts.astype(np.float64), 1.0)
    if cfg.class_weighting == "inverse":
        w = 1.0 / n
    elif cfg.class_weighting == "sqrt_inverse":
        w = 1.0 / np.sqrt(n)
    else:  # effective number of samples (Cui et al., 2019)
        w = (1.0 - cfg.beta) / (1.0 - np.power(cfg.beta, n))
    present = counts > 0
    w = np.where(present, w, 0.0)
    w = w / w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


def probe_balance(data: DataConfig, loss: LossConfig) -> bool:
    """The probe's one imbalance correction: `loss.class_weighting: inverse` ("balanced")."""
    unsupported = [
        name
        for name, on in (
            ("data.sampler: balanced", data.sampler != "none"),
            ("loss.logit_adjustment", loss.logit_adjustment > 0),
            ("loss.label_smoothing", loss.label_smoothing > 0),
            (
                f"loss.class_weighting: {loss.class_weighting}",
                loss.class_weighting not in ("none", "inverse"),
            ),
        )
        if on
    ]
    if unsupported:
        raise UserError(
            f"train_head.method: probe does not use {', '.join(unsupported)} (it supports "
            "loss.class_weighting: none | inverse); use train_head.method: sgd for them"
        )
    return loss.class_weighting == "inverse"


@dataclass
class Setup:
    """The sections both training stages read, validated, plus the species list."""

    base: BaseConfig
    data: DataConfig
    loss: LossConfig
    species: list[Species]

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Setup:
        """Validate the shared training sections (one clear error per bad key, imbalance
        options that stack) and load the species the model learns (`model_species`)."""
        base = base_config(params)
        data = section(params, "data", DataConfig)
        loss = section(params, "loss", LossConfig)
        check_imbalance_options(data, loss)
        species, _ = model_species(params, load_species(base.species_file))
        return cls(base, data, loss, species)

    def provenance(self, **sections: Any) -> dict[str, Any]:
        """The params a checkpoint was trained with: configs, or dicts of the keys used."""
        shared = {"base": self.base, "data": self.data, "loss": self.loss}
        return {k: v if isinstance(v, dict) else to_dict(v) for k, v in (shared | sections).items()}


def fit_spec(
    cfg: TrainHeadConfig | FinetuneConfig, setup: Setup, *, epochs: int, lr: float, seed: int
) -> FitSpec:
    return FitSpec(
        epochs=epochs,
        lr=lr,
        weight_decay=cfg.weight_decay,
        select_metric=cfg.select_metric,
        batch_size=setup.data.batch_size,
        sampler=setup.data.sampler,
        loss=setup.loss,
        seed=seed,
        schedule=cfg.schedule,
        warmup_epochs=cfg.warmup_epochs,
        ema_decay=cfg.ema_decay,
        layer_lr_decay=getattr(cfg, "layer_lr_decay", 1.0),
    )


def finetune_settings(head: TrainHeadConfig, cfg: FinetuneConfig, seed: int) -> dict[str, Any]:
    """The finetune stage's epochs, lr and seed, derived from the head's settings."""
    return {
        "epochs": cfg.epochs or max(2, head.epochs // 2),
        "lr": head.lr * cfg.lr_scale,
        "seed": seed + 1,  # a different epoch order from the head stage
    }


def start_process(base: BaseConfig) -> None:
    """Seed everything, set the threads and, under torchrun, join the process group (every rank
    gets the same seed: same initial weights)."""
    seed_everything(base.seed, base.deterministic)
    distributed.init(resolve_device(base.device), base.threads)


def check_refit(*, refit: bool, method: str, finetune_enabled: bool) -> None:
    """`train_head.refit` fits the probe on train + val: it needs the probe, and it excludes
    finetune, which chooses its epoch on the val photos. Checked by train_head from params.yaml
    and by finetune from the head checkpoint it starts from."""
    if refit and method != "probe":
        raise UserError("train_head.refit: true needs train_head.method: probe")
    if refit and finetune_enabled:
        raise UserError(
            "train_head.refit trains the head on val photos, but finetune chooses its epoch on "
            "them: set finetune.enabled: false or train_head.refit: false"
        )
