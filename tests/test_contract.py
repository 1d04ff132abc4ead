"""The exported model's contract: `model_meta.json` reads back to exactly what export wrote."""

from __future__ import annotations

import json

import pytest

from snakeid.contract import ModelMeta, ModelMetaError, PreprocessSpec
from snakeid.data.dataset import eval_preprocess_spec
from tiny_model import tiny_meta


def test_metadata_round_trips_through_model_meta():
    written = json.loads(json.dumps(tiny_meta(region="Testland", data_source="folder")))
    meta = ModelMeta.from_dict(written)
    assert meta.to_dict() == written
    assert meta.region == "Testland" and meta.data_source == "folder" and not meta.synthetic
    assert meta.decision["unknown_threshold"] == written["decision"]["unknown_threshold"]


def test_preprocess_block_round_trips():
    block = json.loads(json.dumps(eval_preprocess_spec(224)))
    assert PreprocessSpec.from_dict(block).to_dict() == block


def test_a_missing_unknown_threshold_is_an_error():
    written = tiny_meta()
    del written["decision"]["unknown_threshold"]
    with pytest.raises(ModelMetaError, match="decision.unknown_threshold must be a number"):
        ModelMeta.from_dict(written)
