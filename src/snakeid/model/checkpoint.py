"""The training stages' checkpoint: weights plus everything needed to rebuild and interpret them.

One typed record, saved and loaded here only. Loading validates it like `ModelMeta`: a missing,
renamed or extra key fails at load, naming the key, instead of in a later stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from snakeid.contract import DEFAULT_LOW_CONFIDENCE, DEFAULT_VENOMOUS_THRESHOLD
from snakeid.errors import UserError
from snakeid.model.models import ModelConfig, SnakeNet, build_model
from snakeid.taxa import Species

FORMAT = "snakeid-checkpoint/4"  # 2: several backbones, trunk sizes; 3: unknown-species score;
# 4: tta_flip
HOLDOUT_KEYS = {"logits", "labels", "source", "folds", "rows"}
OPENSET_KEYS = {"score", "threshold", "known_pass_rate", "arrays", "fit"}
# The head's calibration until finetune fits one.
HEAD_CALIBRATION = {
    "temperature": 1.0,
    "venomous_threshold": DEFAULT_VENOMOUS_THRESHOLD,
    "low_confidence_threshold": DEFAULT_LOW_CONFIDENCE,
}
CALIBRATION_KEYS = {"temperature", "venomous_threshold", "low_confidence_threshold"}


@dataclass(frozen=True)
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    species: list[dict[str, Any]]  # Species.to_dict(), in output order
    backbone: list[str]
    trunk_sizes: list[int]
    image_size: int  # the input side
    dropout: float
    # the deployed model averages the photo and its mirror image (`model.tta_flip`): fixed at
    # training, because the calibration and the unknown score are fitted on those means
    tta_flip: bool
    preprocess: dict[str, Any]
    params: dict[str, Any]  # the params it was trained with (provenance)
    stage: str  # train_head | finetune
    metrics: dict[str, Any]  # the stage's report
    # temperature, venomous and low-confidence thresholds (set by finetune; 1.0 / 0.5 / 0.5 for
    # the head) plus whatever the fit reports
    calibration: dict[str, Any]
    # logits (N, C), labels (N,), source, and out of fold the folds of train+val and the N
    # photos' rows among them (else None), of photos no weight was fitted on, from which finetune
    # fits the calibration and the unknown-species score (`snakeid.train.head.Holdout`); None once
    # calibrated
    holdout: dict[str, Any] | None
    # the fitted unknown-species score (`snakeid.model.openset.UnknownScore.state`): set by finetune
    openset: dict[str, Any] | None

    @property
    def temperature(self) -> float:
        return float(self.calibration["temperature"])

    @property
    def venomous_threshold(self) -> float:
        return float(self.calibration["venomous_threshold"])

    @property
    def low_confidence_threshold(self) -> float:
        return float(self.calibration["low_confidence_threshold"])

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT} | dataclasses.asdict(self), path)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        if not Path(path).exists():
            raise UserError(f"checkpoint {path} not found (run the earlier pipeline stages first)")
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise UserError(f"{path}: not a {FORMAT} checkpoint (format {got!r})")
        fields = {f.name for f in dataclasses.fields(cls)}
        keys = set(raw) - {"format"}
        if keys != fields:
            missing, extra = sorted(fields - keys), sorted(keys - fields)
            raise UserError(f"{path}: checkpoint keys differ: missing {missing}, unknown {extra}")
        ckpt = cls(**{k: raw[k] for k in fields})
        ckpt._check(path)
        return ckpt

    def _check(self, path: str | Path) -> None:
        if missing := sorted(CALIBRATION_KEYS - set(self.calibration)):
            raise UserError(f"{path}: checkpoint calibration lacks {missing}")
        if self.holdout is not None and (missing := sorted(HOLDOUT_KEYS - set(self.holdout))):
            raise UserError(f"{path}: checkpoint holdout lacks {missing}")
        if self.openset is not None and (missing := sorted(OPENSET_KEYS - set(self.openset))):
            raise UserError(f"{path}: checkpoint openset lacks {missing}")
        if len(self.backbone) != len(self.trunk_sizes):
            raise UserError(
                f"{path}: {len(self.backbone)} backbones but {len(self.trunk_sizes)} sizes"
            )

    def model(self) -> SnakeNet:
        """The network with these weights, in eval mode."""
        net = build_model(
            self.backbone,
            len(self.species),
            ModelConfig(pretrained=False, dropout=self.dropout),
            sizes=self.trunk_sizes,
        )
        net.load_state_dict(self.state_dict)
        return net.eval()


def save_checkpoint(
    path: str | Path,
    model: SnakeNet,
    *,
    species: list[Species],
    preprocess: dict[str, Any],
    tta_flip: bool,
    params: dict[str, Any],
    stage: str,
    metrics: dict[str, Any],
    calibration: dict[str, Any] | None = None,
    holdout: dict[str, Any] | None = None,
    openset: dict[str, Any] | None = None,
) -> None:
    """Save `model`'s weights with their provenance (see `Checkpoint`)."""
    Checkpoint(
        state_dict={k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        species=[s.to_dict() for s in species],
        backbone=list(model.backbones),
        trunk_sizes=[t.size for t in model.trunks],
        image_size=preprocess["crop"],
        dropout=model.dropout.p,
        tta_flip=tta_flip,
        preprocess=preprocess,
        params=params,
        stage=stage,
        metrics=metrics,
        calibration=calibration or HEAD_CALIBRATION,
        holdout=holdout,
        openset=openset,
    ).save(path)


def load_checkpoint(
    path: str | Path, species: list[Species] | None = None
) -> tuple[SnakeNet, Checkpoint]:
    """The model and its checkpoint; `species` (if given) must match its class list."""
    ckpt = Checkpoint.load(path)
    if species is not None and [s.name for s in species] != [s["name"] for s in ckpt.species]:
        raise UserError(
            f"{path} was trained on a different species list ({len(ckpt.species)} species) "
            f"than the species file ({len(species)}); re-run train_head"
        )
    return ckpt.model(), ckpt
