"""ONNX export's parity check, and the exported model's metadata (`snakeid.contract.ModelMeta`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from snakeid import __version__
from snakeid.config import spec
from snakeid.contract import INPUT_NAME, OUTPUT_NAME, UNKNOWN_NAME, ModelMeta, PreprocessSpec
from snakeid.errors import UserError
from snakeid.model.onnx_export import output_names
from snakeid.taxa import Species
from snakeid.utils import sha256_json

if TYPE_CHECKING:
    from snakeid.model.checkpoint import Checkpoint

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    opset: int = field(default=17, metadata=spec(ge=13, le=21))
    max_abs_diff: float = field(default=1e-3, metadata=spec(gt=0.0))
    parity_images: int = field(default=64, metadata=spec(ge=1))
    # Where the species live, e.g. "the Philippines", when the species file does not say it
    # (its top-level `region`); shown by predict, the page and the model card.
    region: str | None = None


def parity(model: torch.nn.Module, session: Any, batches: Sequence[np.ndarray]) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on the same inputs: top-1 agreement, max |logit difference| and,
    for a model with an unknown-species score, its max |difference|."""
    names = output_names(model)
    diffs: dict[str, float] = dict.fromkeys(names, 0.0)
    agree, n = 0, 0
    model.eval()
    for x in batches:
        with torch.inference_mode():
            ref = model(torch.from_numpy(x))
        refs = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        got = session.run(list(names), {INPUT_NAME: x})
        for name, r, g in zip(names, refs, got, strict=True):
            diffs[name] = max(diffs[name], float(np.abs(r - g).max()))
        agree += int((refs[0].argmax(1) == got[0].argmax(1)).sum())
        n += len(x)
    result = {
        "parity_images": n,
        "max_abs_logit_diff": diffs[OUTPUT_NAME],
        "top1_agreement": agree / n,
    }
    if UNKNOWN_NAME in diffs:
        result["max_abs_unknown_score_diff"] = diffs[UNKNOWN_NAME]
    return result


PARITY_HEADLINE = ("top1_agreement", "max_abs_logit_diff", "max_abs_unknown_score_diff")


def check_parity(result: dict[str, Any], cfg: ExportConfig) -> None:
    """The |difference| bound alone: a top-1 swap beyond a near tie (top-2 margin ≤ twice the
    bound) needs a larger difference, and a near tie may swap on any CPU's floats."""
    unknown_diff = result.get("max_abs_unknown_score_diff", 0.0)
    if result["max_abs_logit_diff"] > cfg.max_abs_diff or unknown_diff > cfg.max_abs_diff:
        raise UserError(
            f"ONNX export does not match PyTorch: max |logit diff| "
            f"{result['max_abs_logit_diff']:.2e}, max |unknown score diff| {unknown_diff:.2e} "
            f"(need ≤ {cfg.max_abs_diff}; top-1 agreement {result['top1_agreement']:.4f})"
        )


def model_region(from_species_file: str | None, cfg: ExportConfig) -> str | None:
    """The region the model covers: the species file's or `export_onnx.region`; both set and
    different is an error."""
    given = cfg.region.strip() if cfg.region else None
    if from_species_file and given and from_species_file != given:
        raise UserError(
            f"the species file says region {from_species_file!r} but export_onnx.region is "
            f"{given!r}: state it in one place"
        )
    return from_species_file or given


def model_meta(
    ckpt: Checkpoint,
    cfg: ExportConfig,
    *,
    region: str | None,
    unknown_score: dict[str, Any],
    data: dict[str, Any],
    evaluation: dict[str, Any],
) -> ModelMeta:
    """The exported model's metadata (`snakeid.contract.ModelMeta`) from its checkpoint, with its
    provenance: `data` (snakeid.deploy.card.data_provenance) and `evaluation` (the test headline and
    its `venomous_lookalikes`)."""
    adapted = (ckpt.params.get("adapt") or {}).get("backbones", [])
    return ModelMeta(
        species=tuple(Species(s["name"], s["common"], s["venomous"]) for s in ckpt.species),
        preprocess=PreprocessSpec.from_dict(ckpt.preprocess),
        region=region,
        unknown_threshold=unknown_score["threshold"],
        unknown_score={k: v for k, v in unknown_score.items() if k != "threshold"},
        low_confidence_threshold=ckpt.low_confidence_threshold,
        venomous_threshold=ckpt.venomous_threshold,
        temperature=ckpt.temperature,
        tta_flip=ckpt.tta_flip,
        backbone="+".join(ckpt.backbone),
        image_size=ckpt.image_size,
        trunks=tuple(
            {"backbone": b, "size": size, "adapted": b in adapted}
            for b, size in zip(ckpt.backbone, ckpt.trunk_sizes, strict=True)
        ),
        params_digest=sha256_json(ckpt.params),
        created_by=f"snakeid {__version__}",
        data=data,
        evaluation=evaluation,
    )
