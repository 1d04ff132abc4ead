"""What the exported model is, in one torch-free home at the bottom of the package: its metadata
format, its ONNX input and output names, the marker of a synthetic model and the decision
defaults. Export writes these; predict, the service, the model card and the quantize stage read
them; the model builds its outputs under these names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snakeid.errors import InvalidValue
from snakeid.taxa import Species

META_FORMAT = "snakeid-model/2"  # 2: the unknown-species score (output and threshold)
# (`region`, added later, is optional: a model without it reads as "region not stated")
META_FILENAME = "model_meta.json"  # beside the ONNX model

INPUT_NAME = "input"  # NCHW float32 images, preprocessed as `preprocess` in the metadata says
OUTPUT_NAME = "logits"  # calibrated logits (temperature applied): softmax gives probabilities
UNKNOWN_NAME = "unknown_score"  # higher = less likely one of the species (snakeid.model.openset)

SYNTHETIC_SOURCE = "demo-synthetic"  # data.source of a model trained on the demo's generated photos

# The decision without fitted thresholds (a head before calibration, a model whose metadata has
# none): "low confidence" under this top-1 probability; "possibly venomous" at or over this
# summed probability of the venomous species.
DEFAULT_LOW_CONFIDENCE = 0.5
DEFAULT_VENOMOUS_THRESHOLD = 0.5


# Keys whose value this implementation does not vary on: it supports exactly these.
_FIXED = {
    "color": "RGB",
    "interpolation": "bilinear",
    "antialias": True,
    "crop_policy": "center",
    "layout": "NCHW",
}
_VARIABLE = {"exif_transpose", "resize_shorter", "crop", "scale", "mean", "std"}


class PreprocessSpecError(InvalidValue):
    """The model's `preprocess` block asks for something this implementation cannot replay."""


@dataclass(frozen=True)
class PreprocessSpec:
    resize_shorter: int  # shorter side after the resize
    crop: int  # side of the centre crop, i.e. the network input
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1 / 255  # uint8 -> [0, 1]
    exif_transpose: bool = True

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PreprocessSpec:
        """Validate a `preprocess` block; every error names the offending key."""
        if not isinstance(raw, Mapping):
            raise PreprocessSpecError("preprocess: expected a mapping")
        unknown = sorted(set(raw) - set(_FIXED) - _VARIABLE)
        if unknown:
            raise PreprocessSpecError(f"preprocess: unknown key {unknown[0]!r}")
        for key, value in _FIXED.items():
            if key in raw and raw[key] != value:
                raise PreprocessSpecError(
                    f"preprocess.{key}: only {value!r} is supported, got {raw[key]!r}"
                )
        missing = sorted(k for k in ("resize_shorter", "crop", "mean", "std") if k not in raw)
        if missing:
            raise PreprocessSpecError(f"preprocess: missing key {missing[0]!r}")
        for key in ("resize_shorter", "crop"):
            if isinstance(raw[key], bool) or not isinstance(raw[key], int) or raw[key] < 1:
                raise PreprocessSpecError(
                    f"preprocess.{key}: expected a positive integer, got {raw[key]!r}"
                )
        if raw["resize_shorter"] < raw["crop"]:
            # torchvision would zero-pad here; no exported model does this, so refuse it.
            raise PreprocessSpecError(
                f"preprocess.resize_shorter ({raw['resize_shorter']}) is smaller than "
                f"preprocess.crop ({raw['crop']})"
            )
        triples = {}
        for key in ("mean", "std"):
            value = raw[key]
            if (
                not isinstance(value, Sequence)
                or len(value) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            ):
                raise PreprocessSpecError(f"preprocess.{key}: expected 3 numbers, got {value!r}")
            triples[key] = tuple(float(v) for v in value)
        if not all(triples["std"]):
            raise PreprocessSpecError("preprocess.std: values must be non-zero")
        scale = raw.get("scale", 1 / 255)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0:
            raise PreprocessSpecError(
                f"preprocess.scale: expected a positive number, got {scale!r}"
            )
        exif = raw.get("exif_transpose", True)
        if not isinstance(exif, bool):
            raise PreprocessSpecError(
                f"preprocess.exif_transpose: expected true or false, got {exif!r}"
            )
        return cls(
            resize_shorter=raw["resize_shorter"],
            crop=raw["crop"],
            mean=triples["mean"],
            std=triples["std"],
            scale=float(scale),
            exif_transpose=exif,
        )

    def to_dict(self) -> dict[str, Any]:
        """The `preprocess` block as `snakeid.data.dataset.eval_preprocess_spec` writes it."""
        return _FIXED | {
            "exif_transpose": self.exif_transpose,
            "resize_shorter": self.resize_shorter,
            "crop": self.crop,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
        }


class ModelMetaError(InvalidValue):
    """`model_meta.json` is missing, malformed, or does not match the model."""


# what the logits output is, for an application reading the metadata
OUTPUT_DESCRIPTION = "calibrated logits: softmax gives the probabilities (temperature applied)"


@dataclass(frozen=True)
class ModelMeta:
    """`model_meta.json`: everything an application needs to use the exported model without this
    repository, and its provenance. Export builds it (`snakeid.model.export.model_meta`) and writes
    `to_dict()`; predict, the service, the model card and the quantize stage read it with
    `from_dict`, which validates what they rely on and keeps the rest as written."""

    species: tuple[Species, ...]  # the model's output order
    preprocess: PreprocessSpec
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    unknown_output_name: str = UNKNOWN_NAME
    # "Not one of the species this model knows" when the unknown score is above this (fitted on
    # held-out photos so that `finetune.known_pass_rate` of them pass; `from_dict` requires it)
    unknown_threshold: float = float("inf")
    # what the unknown score is and its fit (snakeid.model.openset.UnknownScore.describe),
    # no threshold
    unknown_score: Mapping[str, Any] = field(default_factory=dict)
    low_confidence_threshold: float | None = None
    venomous_threshold: float | None = None
    temperature: float | None = None
    tta_flip: bool | None = None
    backbone: str | None = None
    image_size: int | None = None
    # one input for every trunk; a trunk whose side differs resizes it inside the graph, so
    # `preprocess` is the whole preprocessing an application does. adapted: fine-tuned end to end
    # on this model's training photos (`adapt.backbones`)
    trunks: tuple[Mapping[str, Any], ...] = ()
    params_digest: str | None = None
    created_by: str | None = None
    # where the species it knows live, e.g. "the Philippines" (None: not stated)
    region: str | None = None
    # provenance (snakeid.deploy.card.data_provenance):
    # data.source is "demo-synthetic" | "folder" | "inat"
    data: Mapping[str, Any] = field(default_factory=dict)
    # the test headline and its `venomous_lookalikes` (snakeid.train.evaluate)
    evaluation: Mapping[str, Any] = field(default_factory=dict)

    @property
    def data_source(self) -> str | None:
        return self.data.get("source")

    @property
    def synthetic(self) -> bool:
        """Trained on the demo's generated photos: not a model of real snakes."""
        return self.data_source == SYNTHETIC_SOURCE

    @property
    def decision(self) -> dict[str, float | None]:
        return {
            "low_confidence_threshold": self.low_confidence_threshold,
            # "possibly venomous" when P(any venomous species) ≥ this
            "venomous_threshold": self.venomous_threshold,
            # "not one of the species this model knows" when the unknown score is above this;
            # an unknown snake is possibly venomous
            "unknown_threshold": self.unknown_threshold,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": META_FORMAT,
            "species": [
                {"name": s.name, "common": s.common, "venomous": s.venomous} for s in self.species
            ],
            "region": self.region,
            "preprocess": self.preprocess.to_dict(),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "output": OUTPUT_DESCRIPTION,
            "unknown_output_name": self.unknown_output_name,
            "unknown_score": dict(self.unknown_score),
            "temperature": self.temperature,
            "tta_flip": self.tta_flip,
            "backbone": self.backbone,
            "image_size": self.image_size,
            "trunks": [dict(t) for t in self.trunks],
            "params_digest": self.params_digest,
            "created_by": self.created_by,
            "decision": self.decision,
            "data": dict(self.data),
            "evaluation": dict(self.evaluation),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = META_FILENAME) -> ModelMeta:
        """Validate the metadata the exporter wrote; errors name the file and the key."""
        if not isinstance(raw, Mapping):
            raise ModelMetaError(f"{source}: expected a JSON object")
        if raw.get("format") != META_FORMAT:
            raise ModelMetaError(
                f"{source}: 'format' is {raw.get('format')!r}, this snakeid reads {META_FORMAT!r}"
            )
        try:
            spec = PreprocessSpec.from_dict(raw.get("preprocess"))
        except ValueError as e:
            raise ModelMetaError(f"{source}: {e}") from e
        image_size = raw.get("image_size")
        if image_size is not None and image_size != spec.crop:
            raise ModelMetaError(
                f"{source}: image_size {image_size} differs from preprocess.crop {spec.crop}"
            )
        for key in ("input_name", "output_name", "unknown_output_name"):
            if not isinstance(raw.get(key, ""), str):
                raise ModelMetaError(f"{source}: '{key}' must be a string")
        region = raw.get("region")
        if region is not None and (not isinstance(region, str) or not region.strip()):
            raise ModelMetaError(f"{source}: 'region' must be a non-empty string or null")
        data = raw.get("data") or {}
        if not isinstance(data, Mapping) or not isinstance(data.get("source", ""), str):
            raise ModelMetaError(f"{source}: 'data' must be an object with a string 'source'")
        return cls(
            species=_species(raw.get("species"), source),
            preprocess=spec,
            input_name=raw.get("input_name", INPUT_NAME),
            output_name=raw.get("output_name", OUTPUT_NAME),
            unknown_output_name=raw.get("unknown_output_name", UNKNOWN_NAME),
            unknown_score=raw.get("unknown_score") or {},
            temperature=raw.get("temperature"),
            tta_flip=raw.get("tta_flip"),
            backbone=raw.get("backbone"),
            image_size=image_size,
            trunks=tuple(raw.get("trunks") or ()),
            params_digest=raw.get("params_digest"),
            created_by=raw.get("created_by"),
            region=region,
            data=data,
            evaluation=raw.get("evaluation") or {},
            **_decision(raw.get("decision"), source),
        )


def _species(raw: Any, source: str) -> tuple[Species, ...]:
    if not isinstance(raw, list) or not raw:
        raise ModelMetaError(f"{source}: 'species' must be a non-empty list")
    species = []
    for i, item in enumerate(raw):
        ok = (
            isinstance(item, Mapping)
            and isinstance(item.get("name"), str)
            and isinstance(item.get("common"), str)
            and isinstance(item.get("venomous"), bool)
        )
        if not ok:
            raise ModelMetaError(
                f"{source}: species[{i}] must have string 'name' and 'common' and boolean "
                f"'venomous', got {item!r}"
            )
        species.append(Species(item["name"], item["common"], item["venomous"], item.get("inat_id")))
    return tuple(species)


def _decision(raw: Any, source: str) -> dict[str, float]:
    """The thresholds of the metadata's `decision` block: the unknown one required, the other
    two probabilities when given."""
    decision = raw or {}
    if not isinstance(decision, Mapping):
        raise ModelMetaError(f"{source}: 'decision' must be an object")
    thresholds = {}
    for key in ("low_confidence_threshold", "venomous_threshold"):
        value = decision.get(key)
        if value is not None:
            try:
                thresholds[key] = check_probability(value, f"{source}: decision.{key}")
            except ValueError as e:
                raise ModelMetaError(str(e)) from e
    unknown = decision.get("unknown_threshold")
    if isinstance(unknown, bool) or not isinstance(unknown, int | float):
        raise ModelMetaError(
            f"{source}: decision.unknown_threshold must be a number, got {unknown!r}"
        )
    return thresholds | {"unknown_threshold": float(unknown)}


def check_probability(value: Any, what: str) -> float:
    """`value` as a float in [0, 1]; else an `InvalidValue` that starts with `what`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise InvalidValue(f"{what}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def load_meta(path: str | Path) -> ModelMeta:
    """Read and validate a `model_meta.json`."""
    path = Path(path)
    if not path.is_file():
        raise ModelMetaError(
            f"model metadata not found: {path} (the exporter writes it beside the model; "
            "pass --meta to use another file)"
        )
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ModelMetaError(f"{path}: not valid JSON ({e})") from e
    return ModelMeta.from_dict(raw, str(path))
