"""params.yaml and the config dataclasses say the same thing: each hyperparameter has one value.

The dataclass defaults exist so library code and tests can build configs without a params file;
this test makes them equal to params.yaml, key by key, so deleting a key from params.yaml changes
nothing and no default drifts from the pipeline's value.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from snakeid.config import BaseConfig, load_params, section, to_dict
from snakeid.data.dataset import DataConfig
from snakeid.data.sources import DownloadConfig
from snakeid.data.split import SplitConfig
from snakeid.data.verify import VerifyConfig
from snakeid.deploy.quantize import QuantizeConfig
from snakeid.model.export import ExportConfig
from snakeid.model.models import ModelConfig
from snakeid.train.config import AdaptConfig, FinetuneConfig, LossConfig, TrainHeadConfig
from snakeid.train.evaluate import EvaluateConfig

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
SECTIONS = {
    "base": BaseConfig,
    "download": DownloadConfig,
    "verify": VerifyConfig,
    "split": SplitConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "adapt": AdaptConfig,
    "train_head": TrainHeadConfig,
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
    "export_onnx": ExportConfig,
    "quantize": QuantizeConfig,
}


# The one setting of the demo project rather than of the library: it names a species of the
# default species file (the demo holds it out to measure the unknown-species flag); a library
# default naming a species would be an error with every other species file, so it is empty.
DEMO_SETTINGS = {"split": {"unknown_species": ("Calliophis bivirgatus",)}}


def test_every_params_section_has_its_config():
    assert set(PARAMS) == set(SECTIONS) | {"distributed"}  # distributed: read by dvc.yaml


@pytest.mark.parametrize("name", SECTIONS)
def test_params_yaml_holds_every_default(name):
    cls = SECTIONS[name]
    in_file = to_dict(section(PARAMS, name, cls))
    defaults = to_dict(cls()) | DEMO_SETTINGS.get(name, {})
    drift = {k: (defaults[k], in_file[k]) for k in defaults if defaults[k] != in_file[k]}
    assert not drift, f"{name}: dataclass default vs params.yaml: {drift}"
    written = _keys(PARAMS[name])
    missing = sorted(k for k in _keys(defaults) if k not in written)
    assert not missing, f"{name}: keys params.yaml does not write: {missing}"


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in (tree or {}).items():
        out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def test_configs_are_frozen_dataclasses():
    for cls in SECTIONS.values():
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls
