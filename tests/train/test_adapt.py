"""`adapt`: a trunk fine-tuned end to end before its features are cached."""

import numpy as np
import pytest
import torch

from snakeid.config import BaseConfig, to_dict
from snakeid.data.dataset import DataConfig
from snakeid.data.manifest import read_manifest
from snakeid.errors import UserError
from snakeid.model.models import ModelConfig, build_model
from snakeid.train.adapt import adapt_trunks, check_adapt
from snakeid.train.config import AdaptConfig, TrainHeadConfig
from snakeid.train.features import cache_features, load_caches
from snakeid.train.head import train_probe
from training_data import SPECIES, make_split

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1")
DATA = DataConfig(batch_size=8, views=1)
LITE0 = AdaptConfig(backbones=("efficientnet_lite0",), epochs=2)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("data"))


def _model():
    torch.manual_seed(0)
    return build_model(BACKBONES, len(SPECIES), ModelConfig(), sizes=[64, 64])


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _adapted(split_dir, cfg=LITE0):
    model = _model()
    report = adapt_trunks(model, read_manifest(split_dir / "train.csv"), SPECIES, cfg, data=DATA,
                          seed=3, device="cpu")  # fmt: skip
    return model, report


def test_adapt_trains_only_the_named_trunk_and_repeats_exactly(split_dir):
    before = _model()
    model, report = _adapted(split_dir)
    lite0, lite1 = (_state(t) for t in model.trunks)
    changed = [k for k, v in before.trunks[0].state_dict().items() if not torch.equal(v, lite0[k])]
    assert any(k.endswith("weight") for k in changed)  # conv weights, not only BN statistics
    for k, v in before.trunks[1].state_dict().items():
        assert torch.equal(v, lite1[k]), k  # the other trunk is untouched
    for k, v in before.classifier.state_dict().items():  # the temporary head is not the model's
        assert torch.equal(v, model.classifier.state_dict()[k]), k
    assert not model.trunks[0].training  # handed back in eval mode
    again, again_report = _adapted(split_dir)
    for k, v in again.trunks[0].state_dict().items():
        assert torch.equal(v, lite0[k]), k
    assert again_report == report
    history = report["efficientnet_lite0"]["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    assert report["efficientnet_lite0"]["photos"] == len(read_manifest(split_dir / "train.csv"))
    assert all(0 <= r["train_accuracy"] <= 1 and r["train_loss"] > 0 for r in history)


def test_adapt_refuses_what_it_cannot_do():
    model = _model()
    with pytest.raises(UserError, match="not in base.backbone"):
        check_adapt(AdaptConfig(backbones=("efficientnet_lite2",)), model)
    with pytest.raises(UserError, match="listed twice"):
        check_adapt(AdaptConfig(backbones=("efficientnet_lite0",) * 2), model)
    check_adapt(AdaptConfig(), model)  # none: nothing to refuse


def test_features_of_adapted_trunks_are_refused_for_other_settings(split_dir, tmp_path):
    model, _ = _adapted(split_dir, AdaptConfig(backbones=("efficientnet_lite0",), epochs=1))
    base = BaseConfig(image_size=64, device="cpu", seed=3, backbone=BACKBONES)
    adapt = to_dict(AdaptConfig(backbones=("efficientnet_lite0",), epochs=1))
    cache_features(model, model.depth, tmp_path, split_dir=split_dir, species=SPECIES, base=base,
                   data=DATA, adapt=adapt)  # fmt: skip
    # what finetune passes: the head checkpoint's provenance, read back (a list, not a tuple)
    read_back = adapt | {"backbones": list(adapt["backbones"])}
    load_caches(tmp_path, split_dir=split_dir, base=base, data=DATA, cut=model.depth,
                adapt=read_back)  # fmt: skip
    for other in (None, adapt | {"epochs": 2}):
        with pytest.raises(UserError, match="adapt"):
            load_caches(tmp_path, split_dir=split_dir, base=base, data=DATA, cut=model.depth,
                        adapt=other)  # fmt: skip


def test_an_adapted_trunks_photos_never_calibrate(split_dir, tmp_path):
    """With a trunk adapted on the train photos (as train_head adapts), the refitted probe's
    holdout, from which finetune fits the temperature, the venomous threshold and the unknown
    score, holds only val photos' out-of-fold logits; without adaptation, every train+val
    photo's."""
    model, _ = _adapted(split_dir, AdaptConfig(backbones=("efficientnet_lite0",), epochs=1))
    base = BaseConfig(image_size=64, device="cpu", seed=3, backbone=BACKBONES)
    caches = cache_features(model, model.depth, tmp_path, split_dir=split_dir, species=SPECIES,
                            base=base, data=DATA, adapt=to_dict(LITE0))  # fmt: skip
    train, val = (read_manifest(split_dir / f"{s}.csv") for s in ("train", "val"))
    every = [r["photo_id"] for r in train + val]
    held = {}
    for saw in (True, False):
        _, holdout = train_probe(model, caches, TrainHeadConfig(), balanced=False, seed=3,
                                 trunk_saw_train=saw)  # fmt: skip
        held[saw] = holdout
        scored = [every[i] for i in holdout.state()["rows"].tolist()]
        assert len(scored) == len(holdout.labels) == len(holdout.logits)
        expected = val if saw else train + val
        assert scored == [r["photo_id"] for r in expected]
        names = [sp.name for sp in SPECIES]
        assert holdout.labels.tolist() == [names.index(r["taxon"]) for r in expected]
    assert held[True].source == "out-of-fold val"
    assert not {every[i] for i in held[True].rows} & {r["photo_id"] for r in train}
    # the same out-of-fold logits (same folds), only the train photos' left out
    n = len(train)
    np.testing.assert_array_equal(held[True].logits, held[False].logits[n:])
    np.testing.assert_array_equal(held[True].folds, held[False].folds)
