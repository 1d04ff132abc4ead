"""Inference from the exported artifacts alone: an ONNX model and the `model_meta.json` beside it.

Nothing here imports torch or the training code, so `pip install .[serve]` is enough to run it.
The species list, preprocessing and decision thresholds all come from the metadata the exporter
wrote, never from copies in this repo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from snakeid.contract import (
    DEFAULT_LOW_CONFIDENCE,
    DEFAULT_VENOMOUS_THRESHOLD,
    META_FILENAME,
    ModelMetaError,
    check_probability,
    load_meta,
)
from snakeid.errors import InvalidValue
from snakeid.model.calibration import ranked, softmax, venomous_probability
from snakeid.model.decision import HARMLESS, causes, flagged_unknown, reason, scope, verdicts
from snakeid.model.onnxio import ort_session
from snakeid.model.preprocess import preprocess
from snakeid.taxa import Species
from snakeid.utils import sha256_file

_logger = logging.getLogger(__name__)

# Said by `snakeid predict` (stderr) and the service page whenever the model is synthetic.
SYNTHETIC_WARNING = (
    "this model was trained on synthetic demo photos; it does not identify real snakes"
)
DEFAULT_MODEL = Path("models/model_int8.onnx")  # relative to the working directory or the project
MODEL_ENV = "SNAKEID_MODEL"  # the model to use when --model is not given
# The project an editable install runs from (src/snakeid/ is two levels below it).
PROJECT = Path(__file__).resolve().parents[2]


def find_model(explicit: str | Path | None = None) -> Path:
    """The model to load: `explicit` (`--model`), else `$SNAKEID_MODEL`, else `DEFAULT_MODEL`
    under the working directory, else under the project this package was installed from (an
    editable install: `src/snakeid/` two levels below it). The error names every path tried."""
    if explicit is not None or os.environ.get(MODEL_ENV):
        path = Path(explicit if explicit is not None else os.environ[MODEL_ENV])
        given = "--model" if explicit is not None else f"${MODEL_ENV}"
        if not path.is_file():
            raise FileNotFoundError(f"model not found: {path} (from {given})")
        return path
    tried = list(dict.fromkeys([DEFAULT_MODEL.absolute(), PROJECT / DEFAULT_MODEL]))
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"model not found: tried {', '.join(map(str, tried))} — run `make repro` in the project "
        f"to build it, or pass --model or set ${MODEL_ENV}"
    )


def default_meta_path(model_path: str | Path) -> Path:
    """The metadata of `models/x.onnx` is `models/model_meta.json`."""
    return Path(model_path).with_name(META_FILENAME)


@dataclass(frozen=True)
class Prediction:
    species: str
    common_name: str
    venomous: bool
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "species": self.species,
            "common_name": self.common_name,
            "venomous": self.venomous,
            "probability": self.probability,
        }


@dataclass(frozen=True)
class ImageResult:
    # what a person acts on (`snakeid.model.decision`): venomous | possibly_venomous | harmless
    verdict: str
    reason: str  # why, in plain words
    predictions: tuple[Prediction, ...]  # top-k, most probable first: the closest species
    low_confidence: bool  # top-1 probability under the threshold
    venomous_probability: float  # summed probability of the venomous species
    unknown_score: float  # higher = less likely one of the model's species
    # unknown_score minus the model's threshold: above 0, flagged unknown
    unknown_margin: float
    unknown: bool  # the score is above the threshold: not one of the species the model knows

    @property
    def possibly_venomous(self) -> bool:
        """Any verdict but harmless: the flag scripts filter on."""
        return self.verdict != HARMLESS

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "predictions": [p.to_dict() for p in self.predictions],
            "low_confidence": self.low_confidence,
            "possibly_venomous": self.possibly_venomous,
            "venomous_probability": self.venomous_probability,
            "unknown_score": self.unknown_score,
            "unknown_margin": self.unknown_margin,
            "unknown": self.unknown,
        }


class Predictor:
    """One ONNX Runtime session plus the metadata that says how to feed it and read it.

    Load once and share: `InferenceSession.run` is safe to call from several threads.
    """

    def __init__(
        self,
        model_path: str | Path,
        meta_path: str | Path | None = None,
        *,
        threads: int = 0,
        batch_size: int = 16,
        low_confidence: float | None = None,
        venomous_threshold: float | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model not found: {self.model_path}")
        if batch_size < 1:
            raise InvalidValue(f"batch_size must be at least 1, got {batch_size}")
        if threads < 0:
            raise InvalidValue(f"threads must be 0 (onnxruntime's default) or more, got {threads}")
        self.meta = load_meta(meta_path or default_meta_path(self.model_path))
        self.batch_size = batch_size
        # An explicit argument wins, then the exporter's decision block, then the default.
        self.low_confidence = _first(
            low_confidence,
            self.meta.low_confidence_threshold,
            DEFAULT_LOW_CONFIDENCE,
            "low_confidence",
        )
        self.venomous_threshold = _first(
            venomous_threshold,
            self.meta.venomous_threshold,
            DEFAULT_VENOMOUS_THRESHOLD,
            "venomous_threshold",
        )
        self.model_sha256 = sha256_file(self.model_path)

        self.session = ort_session(self.model_path, threads)
        self._check_session()
        self._venomous = np.array([s.venomous for s in self.meta.species])
        _logger.info(
            "loaded %s (%d species, sha256 %s)",
            self.model_path,
            len(self.species),
            self.model_sha256[:12],
        )

    def _check_session(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        names = (self.meta.output_name, self.meta.unknown_output_name)
        if self.meta.input_name not in inputs or any(n not in outputs for n in names):
            raise ModelMetaError(
                f"{self.model_path}: metadata names input {self.meta.input_name!r} and outputs "
                f"{list(names)}, the model has inputs {sorted(inputs)} and outputs "
                f"{sorted(outputs)}"
            )
        n_out = outputs[self.meta.output_name].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.species):
            raise ModelMetaError(
                f"{self.model_path}: model has {n_out} outputs, "
                f"metadata lists {len(self.species)} species"
            )

    @property
    def species(self) -> tuple[Species, ...]:
        return self.meta.species

    @property
    def unknown_message(self) -> str:
        """What the CLI, the API and the page say of a photo flagged unknown."""
        return f"Not one of the {len(self.species)} species this model knows"

    @property
    def scope(self) -> str:
        """What the model knows, with its region: "knows 14 snake species of ...; ..."."""
        return scope(len(self.species), self.meta.region)

    def info(self) -> dict[str, Any]:
        """What a response says about the model that produced it."""
        return {
            "file": self.model_path.name,
            "sha256": self.model_sha256,
            "backbone": self.meta.backbone,
            "image_size": self.meta.preprocess.crop,
            "n_species": len(self.species),
            "region": self.meta.region,
            "scope": self.scope,
            "params_digest": self.meta.params_digest,
            "created_by": self.meta.created_by,
            "low_confidence_threshold": self.low_confidence,
            "venomous_threshold": self.venomous_threshold,
            "unknown_threshold": self.meta.unknown_threshold,
            "data_source": self.meta.data_source,
            "synthetic": self.meta.synthetic,
        }

    def check_top_k(self, top_k: int) -> int:
        if not 1 <= top_k <= len(self.species):
            raise InvalidValue(
                f"top-k must be between 1 and {len(self.species)} (the model's species), "
                f"got {top_k}"
            )
        return top_k

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed (N, 3, S, S) float32 -> class probabilities (N, n_species) and
        unknown-species scores (N,)."""
        logits, unknown = self.session.run(
            [self.meta.output_name, self.meta.unknown_output_name], {self.meta.input_name: batch}
        )
        return softmax(logits), unknown

    def predict_images(self, images: Sequence[Image.Image], top_k: int = 3) -> list[ImageResult]:
        """Top-k results for each image, in input order."""
        return self.predict_arrays([preprocess(im, self.meta.preprocess) for im in images], top_k)

    def predict_arrays(self, arrays: Sequence[np.ndarray], top_k: int = 3) -> list[ImageResult]:
        """Like `predict_images` for already preprocessed (3, S, S) arrays; one ONNX call per
        `batch_size` of them."""
        self.check_top_k(top_k)
        results: list[ImageResult] = []
        for start in range(0, len(arrays), self.batch_size):
            batch = np.stack(arrays[start : start + self.batch_size]).astype(np.float32, copy=False)
            probs, unknown = self.scores(batch)
            results.extend(
                self.summarise(p, float(u), top_k) for p, u in zip(probs, unknown, strict=True)
            )
        return results

    def summarise(self, probs: np.ndarray, unknown_score: float, top_k: int) -> ImageResult:
        """One row of probabilities and its unknown score -> top-k predictions, the flags and the
        verdict."""
        order = ranked(probs, top_k)
        predictions = tuple(
            Prediction(
                species=self.species[i].name,
                common_name=self.species[i].common,
                venomous=self.species[i].venomous,
                probability=float(probs[i]),
            )
            for i in order
        )
        # The same rule `evaluate` reports on test: summed probability of the venomous species.
        venomous_p = float(venomous_probability(probs[None, :], self._venomous)[0])  # (1, C)
        unknown = bool(flagged_unknown(unknown_score, self.meta.unknown_threshold))
        low_confidence = predictions[0].probability < self.low_confidence
        cause = causes(
            probs[None, :],
            self._venomous,
            np.array([unknown]),
            venomous_threshold=self.venomous_threshold,
            low_confidence_threshold=self.low_confidence,
        )[0]
        return ImageResult(
            verdict=str(verdicts([cause])[0]),
            reason=reason(
                cause, probs, self.species, region=self.meta.region, low_confidence=low_confidence
            ),
            predictions=predictions,
            low_confidence=low_confidence,
            venomous_probability=venomous_p,
            unknown_score=unknown_score,
            unknown_margin=unknown_score - self.meta.unknown_threshold,
            unknown=unknown,
        )


def _first(explicit: float | None, from_meta: float | None, default: float, what: str) -> float:
    if explicit is not None:
        return check_probability(explicit, what)
    return from_meta if from_meta is not None else default
