"""Every offline backbone, and a multi-backbone model, end to end on tiny data: pretrained weights
load, training changes only what it may, the ONNX export matches PyTorch, INT8 quantizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snakeid.config import BaseConfig
from snakeid.data.dataset import DataConfig, eval_batches
from snakeid.data.manifest import read_manifest
from snakeid.deploy.quantize import QuantizeConfig, _edge_nodes, quantize
from snakeid.deploy.quantize_checks import run_probs
from snakeid.errors import UserError
from snakeid.model.deployed import DeployedModel
from snakeid.model.export import parity
from snakeid.model.models import LITE, ModelConfig, build_model, trunk_sizes
from snakeid.model.onnx_export import export_onnx
from snakeid.model.onnxio import ort_session
from snakeid.model.openset import UnknownScore
from snakeid.train.config import FitSpec, LossConfig, TrainHeadConfig, probe_balance
from snakeid.train.features import cache_features
from snakeid.train.head import train_probe
from snakeid.train.loop import train_tail
from training_data import SPECIES, make_split

torch.set_num_threads(2)
SIZE = 64  # base.image_size: every trunk at 64 px keeps these tests fast
BASE = BaseConfig(image_size=SIZE, device="cpu", seed=5)
DATA = DataConfig(batch_size=8, views=2)
FIT = FitSpec(
    epochs=1, lr=3e-3, weight_decay=0.0, select_metric="macro_f1", batch_size=8,
    sampler="none", loss=LossConfig(), seed=5,
)  # fmt: skip


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("data"))


def _model(backbone):
    names = [backbone] if isinstance(backbone, str) else backbone
    torch.manual_seed(0)
    return build_model(names, len(SPECIES), ModelConfig(), sizes=trunk_sizes(tuple(names), SIZE))


def _changed(before, model):
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def _unknown_score(model, split_dir, temperature):
    """The deployed unknown-species score, fitted on the train photos (3 folds)."""
    x = np.concatenate(
        eval_batches(read_manifest(split_dir / "train.csv"), SPECIES, model.input_size)
    )
    with torch.inference_mode():
        z = model.embed(torch.from_numpy(x))
        logits = (model.head(z) / temperature).numpy()
    folds = np.arange(len(x)) % 3
    z = z.numpy()
    return UnknownScore.fit(
        z[None], z, logits, bank_folds=folds, held_folds=folds, known_pass_rate=0.9
    )


def _export_and_quantize(model, split_dir, tmp_path):
    score = _unknown_score(model, split_dir, 1.3)
    deployed = DeployedModel(model, temperature=1.3, openset=score.module()).eval()
    onnx = tmp_path / "m.onnx"
    export_onnx(deployed, onnx, model.input_size, opset=17)
    rows = read_manifest(split_dir / "test.csv")
    batches = eval_batches(rows, SPECIES, model.input_size)
    check = parity(deployed, ort_session(onnx), batches)
    assert check["top1_agreement"] == 1.0 and check["max_abs_logit_diff"] < 1e-3
    assert check["max_abs_unknown_score_diff"] < 1e-3
    int8 = tmp_path / "m_int8.onnx"
    calib = eval_batches(read_manifest(split_dir / "train.csv")[:8], SPECIES, model.input_size, 1)
    quantize(onnx, int8, QuantizeConfig(), calib)
    (fp32_p, fp32_u), (int8_p, int8_u) = (run_probs(ort_session(m), batches) for m in (onnx, int8))
    assert int8.stat().st_size < onnx.stat().st_size / 2
    assert np.abs(fp32_p - int8_p).max() < 0.5  # INT8 computes the same function, roughly
    assert fp32_u.shape == int8_u.shape == (len(rows),) and np.isfinite(int8_u).all()
    return onnx


@pytest.mark.parametrize("backbone", list(LITE))
def test_offline_backbone_finetunes_only_its_unfrozen_blocks_and_exports(
    backbone, split_dir, tmp_path
):
    model = _model(backbone)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    caches = cache_features(
        model, model.cut(1), tmp_path / "f", split_dir=split_dir, species=SPECIES, base=BASE,
        data=DATA,
    )  # fmt: skip
    train_tail(model, 1, caches, base=BASE, data=DATA, fit=FIT, stage="t")
    n = len(model.features)
    changed = _changed(before, model)
    assert changed and all(
        k.startswith((f"trunks.0.features.{n - 1}.", "classifier.")) for k in changed
    ), sorted(changed)
    _export_and_quantize(model, split_dir, tmp_path)


def test_multi_backbone_probe_exports_one_graph_and_quantizes_every_trunk(split_dir, tmp_path):
    names = ["efficientnet_lite0", "efficientnet_lite1"]
    torch.manual_seed(0)
    model = build_model(names, len(SPECIES), ModelConfig())  # native sizes: 224 and 240
    assert model.input_size == 240
    base = BaseConfig(image_size=None, device="cpu", seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    caches = cache_features(
        model, model.depth, tmp_path / "f", split_dir=split_dir, species=SPECIES, base=base,
        data=DATA,
    )  # fmt: skip
    assert caches.train.array.shape == (2, len(caches.train_labels), 2560)  # 2 views, pooled
    metrics, holdout = train_probe(model, caches, TrainHeadConfig(), balanced=False, seed=5)
    assert _changed(before, model) == {"classifier.weight", "classifier.bias"}
    # refit: the holdout is every train+val photo, each predicted by a probe that never saw it
    assert len(holdout.labels) == len(caches.train_labels) + len(caches.val_labels)
    assert holdout.source == "out-of-fold train+val"
    assert metrics["val_macro_f1"] > 1 / len(SPECIES)
    onnx = _export_and_quantize(model, split_dir, tmp_path)
    # each trunk's first convolution (raw pixels in), the classifier and the unknown score's
    # similarity to its bank stay FP32 (with the score's other nodes)
    weighted = [n for n in _edge_nodes(onnx) if n.endswith(("/Conv", "/Gemm", "/MatMul"))]
    assert len(weighted) == 4 and {"/classifier/Gemm", "/openset/MatMul"} <= set(weighted)


def test_probe_is_deterministic_and_matches_its_val_predictions(split_dir, tmp_path):
    model = _model(["efficientnet_lite0"])
    caches = cache_features(
        model, model.depth, tmp_path / "f", split_dir=split_dir, species=SPECIES, base=BASE,
        data=DATA,
    )  # fmt: skip
    cfg = TrainHeadConfig(refit=False)
    m1, h1 = train_probe(model, caches, cfg, balanced=False, seed=5)
    w1 = model.classifier.weight.detach().clone()
    m2, h2 = train_probe(model, caches, cfg, balanced=False, seed=5)
    assert m1 == m2 and torch.equal(w1, model.classifier.weight)
    # the folded standardisation: the head on raw pooled features gives the holdout logits
    with torch.no_grad():
        logits = model.classifier(torch.from_numpy(np.asarray(caches.val.array[0], np.float32)))
    np.testing.assert_allclose(logits.numpy(), h1.logits, atol=1e-4)
    assert h1.source == "val"


def test_probe_refuses_what_it_does_not_do():
    with pytest.raises(UserError, match="probe does not use data.sampler"):
        probe_balance(DataConfig(sampler="balanced"), LossConfig())
    assert probe_balance(DataConfig(), LossConfig(class_weighting="inverse"))


def test_probe_on_a_cache_for_finetune_pools_it_first(split_dir, tmp_path):
    """With finetune on, the cache ends before its blocks: the probe sees the same pooled
    features as on a pooled cache."""
    model = _model(["efficientnet_lite0"])
    cfg = TrainHeadConfig(refit=False)
    got = {}
    for name, cut in (("pooled", model.depth), ("blocks", model.cut(1))):
        caches = cache_features(
            model, cut, tmp_path / name, split_dir=split_dir, species=SPECIES, base=BASE,
            data=DATA,
        )  # fmt: skip
        got[name] = train_probe(model, caches, cfg, balanced=False, seed=5)[1].logits
    np.testing.assert_allclose(got["blocks"], got["pooled"], rtol=0.02, atol=0.05)
