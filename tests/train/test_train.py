import numpy as np
import pytest
import torch

from snakeid.config import BaseConfig
from snakeid.data.dataset import DataConfig, SplitDataset, eval_transform
from snakeid.data.manifest import read_manifest
from snakeid.errors import UserError
from snakeid.model.deployed import deployed
from snakeid.model.engine import feature_engine, prefix_engine
from snakeid.model.models import ModelConfig, build_model
from snakeid.train.config import (
    FitSpec,
    LossConfig,
    check_imbalance_options,
    check_refit,
    class_weights,
)
from snakeid.train.features import cache_features, load_caches
from snakeid.train.loop import train_tail
from training_data import SPECIES, make_split

BASE = BaseConfig(image_size=64, device="cpu", seed=3, backbone="efficientnet_lite0")
DATA = DataConfig(batch_size=8, views=2)


FIT = dict(
    epochs=4,
    lr=3e-3,
    weight_decay=0.0,
    select_metric="macro_f1",
    batch_size=8,
    sampler="none",
    loss=LossConfig(),
    seed=3,
)


def _fit(**kw) -> FitSpec:
    return FitSpec(**(FIT | kw))


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("data"))


def _train(model, unfreeze, split_dir, fit, cache_at=None, tmp=None):
    """Cache features where `cache_at` trainable blocks would begin, then train `unfreeze`."""
    cut = model.cut(unfreeze if cache_at is None else cache_at)
    caches = cache_features(
        model, cut, tmp or split_dir.parent / "features", split_dir=split_dir, species=SPECIES,
        base=BASE, data=DATA,
    )  # fmt: skip
    return train_tail(model, unfreeze, caches, base=BASE, data=DATA, fit=fit, stage="t")


def _model():
    torch.manual_seed(0)
    return build_model("efficientnet_lite0", len(SPECIES), ModelConfig())


def _snapshot(model, prefix=""):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_head_training_lowers_the_loss_and_freezes_the_backbone(split_dir):
    model = _model()
    before = _snapshot(model)
    result = _train(model, 0, split_dir, _fit(epochs=6))
    losses = [r["train_loss"] for r in result.fit.history]
    assert losses[-1] < losses[0]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # every backbone parameter AND BatchNorm buffer (running mean/var, batches seen) is identical
    assert changed == {"classifier.weight", "classifier.bias"}
    assert any("running_mean" in k for k in before)
    assert result.metrics["val_macro_f1"] > 1 / len(SPECIES)


def test_finetune_changes_only_the_unfrozen_blocks_and_classifier(split_dir):
    model = _model()
    before = _snapshot(model)
    n = len(model.features)
    _train(model, 2, split_dir, _fit(epochs=2))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = (f"trunks.0.features.{n - 1}.", f"trunks.0.features.{n - 2}.", "classifier.")
    assert changed and all(k.startswith(allowed) for k in changed), sorted(changed)
    # the unfrozen blocks' BatchNorm statistics do move (they are trained)
    assert any(k.startswith(f"trunks.0.features.{n - 1}.") and "running_mean" in k for k in changed)
    assert any(k.startswith(f"trunks.0.features.{n - 2}.") for k in changed)


def test_training_is_deterministic(split_dir):
    runs = [_train(_model(), 1, split_dir, _fit(epochs=2)).metrics for _ in range(2)]
    assert runs[0] == runs[1]


def test_balanced_sampler_with_class_weights_is_refused():
    loss = LossConfig(class_weighting="inverse")
    with pytest.raises(UserError, match="over-corrects"):
        check_imbalance_options(DataConfig(sampler="balanced"), loss)
    check_imbalance_options(
        DataConfig(sampler="balanced"), LossConfig(class_weighting="inverse", force=True)
    )


@pytest.mark.parametrize("scheme", ["inverse", "sqrt_inverse", "effective_number"])
def test_class_weights_favour_rare_classes(scheme):
    w = class_weights(np.array([100, 10, 0, 1]), LossConfig(class_weighting=scheme, beta=0.99))
    assert w[2] == 0  # absent from training
    assert w[0] < w[1] < w[3]
    assert w[[0, 1, 3]].mean().item() == pytest.approx(1.0)
    assert class_weights(np.array([5, 5]), LossConfig()) is None


def test_balanced_sampler_and_weights_train(split_dir):
    for fit in (
        _fit(epochs=2, sampler="balanced"),
        _fit(epochs=2, loss=LossConfig(class_weighting="sqrt_inverse", label_smoothing=0.1)),
    ):
        r = _train(_model(), 0, split_dir, fit)
        assert np.isfinite(r.metrics["train_loss"])


def test_head_and_finetune_share_one_feature_cache(split_dir, tmp_path):
    """train_head caches at finetune's cut; finetune reuses it; stale caches are refused."""
    model = _model()
    before = _snapshot(model)
    head = _train(model, 0, split_dir, _fit(epochs=2), cache_at=1, tmp=tmp_path)
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed == {"classifier.weight", "classifier.bias"}
    caches = load_caches(tmp_path, split_dir=split_dir, base=BASE, data=DATA, cut=model.cut(1))
    ft = train_tail(model, 1, caches, base=BASE, data=DATA, fit=_fit(epochs=2), stage="t")
    assert ft.metrics["n_train"] == head.metrics["n_train"]
    with pytest.raises(UserError, match="re-run train_head"):
        load_caches(tmp_path, split_dir=split_dir, base=BASE, data=DATA, cut=model.cut(2))
    with pytest.raises(UserError, match="re-run train_head"):
        other = DataConfig(batch_size=8, views=3)
        load_caches(tmp_path, split_dir=split_dir, base=BASE, data=other, cut=model.cut(1))


def test_auto_feature_engine_is_onnxruntime_on_cpu_and_torch_on_gpus():
    assert feature_engine("auto", "cpu") == "onnxruntime"
    assert feature_engine("auto", "cuda") == "torch"
    assert feature_engine("torch", "cpu") == "torch"


def test_onnxruntime_prefix_matches_torch_and_ignores_batch_composition():
    """The ONNX Runtime engine computes the same features as eager PyTorch (float16 storage
    tolerance), and a photo's features do not depend on the batch it is computed in."""
    model = _model().eval()
    prefix = model.features[: model.cut(1)]
    x = torch.randn(6, 3, 64, 64)
    with prefix_engine(prefix, "torch", "cpu", 64) as run:
        ref = run(x)
    with prefix_engine(prefix, "onnxruntime", "cpu", 64) as run:
        got = run(x)
        alone = np.concatenate([run(x[i : i + 1]) for i in range(len(x))])
        split = np.concatenate([run(x[:4]), run(x[4:])])
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)
    assert np.array_equal(got.astype(np.float16), alone.astype(np.float16))
    assert np.array_equal(got.astype(np.float16), split.astype(np.float16))


def test_a_cache_from_another_engine_is_refused(split_dir, tmp_path):
    model = _model()
    torch_data = DataConfig(batch_size=8, views=2, feature_engine="torch")
    cut = model.cut(1)
    cache_features(
        model, cut, tmp_path, split_dir=split_dir, species=SPECIES, base=BASE, data=torch_data
    )
    load_caches(tmp_path, split_dir=split_dir, base=BASE, data=torch_data, cut=cut)
    with pytest.raises(UserError, match="feature_engine"):
        load_caches(tmp_path, split_dir=split_dir, base=BASE, data=DATA, cut=cut)


def test_tta_flip_caches_the_view_the_deployed_model_computes(split_dir, tmp_path):
    """With `model.tta_flip`, view 0 of the cache (the val logits, the calibration and the
    unknown score are computed from it) is what the deployed model computes: the mean of the
    pooled features of the photo and of its mirror image."""
    model = _model().eval()
    caches = cache_features(
        model, model.depth, tmp_path, split_dir=split_dir, species=SPECIES, base=BASE,
        data=DATA, tta_flip=True,
    )  # fmt: skip
    rows = read_manifest(split_dir / "val.csv")
    val = SplitDataset(rows, SPECIES, eval_transform(model.input_size))
    x = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        cached = model.head(caches.val.batch(np.zeros(len(val), int), np.arange(len(val))))
        flipped = deployed(model, temperature=1.0, tta_flip=True)(x)
        plain = deployed(model, temperature=1.0, tta_flip=False)(x)
    off = (cached - flipped).abs().max().item()  # ONNX Runtime and float16 storage
    assert off < 0.1 * (cached - plain).abs().max().item()  # far closer than the unmirrored
    # a cache is read back only with the tta_flip it was made with
    load_caches(tmp_path, split_dir=split_dir, base=BASE, data=DATA, cut=model.depth,
                tta_flip=True)  # fmt: skip
    with pytest.raises(UserError, match="tta_flip"):
        load_caches(tmp_path, split_dir=split_dir, base=BASE, data=DATA, cut=model.depth)


def test_tta_flip_with_a_finetune_cut_is_refused(split_dir, tmp_path):
    model = _model()
    with pytest.raises(UserError, match="model.tta_flip"):
        cache_features(
            model, model.cut(1), tmp_path, split_dir=split_dir, species=SPECIES, base=BASE,
            data=DATA, tta_flip=True,
        )  # fmt: skip


def test_the_probe_separates_two_species() -> None:
    """Two classes: scikit-learn fits one row of log-odds, which the probe splits into two
    (the README's own species file has two species)."""
    from snakeid.model.probe import fit_probe

    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(-1, 1, (40, 5)), rng.normal(1, 1, (40, 5))].astype(np.float32)
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    probe = fit_probe(x, y, 2, c=1.0)
    logits = probe.logits(x)
    assert (logits.argmax(1) == y).mean() > 0.9
    # the same decision as scikit-learn's own, as log-odds
    from sklearn.linear_model import LogisticRegression

    m, s = x.astype(np.float64).mean(0), x.astype(np.float64).std(0) + 1e-6
    lr = LogisticRegression(C=1.0, max_iter=1000).fit((x - m) / s, y)
    np.testing.assert_allclose(
        logits[:, 1] - logits[:, 0], lr.decision_function((x - m) / s), rtol=1e-4, atol=1e-4
    )
    # a third, absent class is never predicted
    three = fit_probe(x, y, 3, c=1.0).logits(x)
    assert (three.argmax(1) == y).mean() > 0.9 and not (three.argmax(1) == 2).any()


@pytest.mark.parametrize(
    ("refit", "method", "finetune_enabled", "error"),
    [
        (True, "probe", False, None),  # the default: a refitted probe, no finetune
        (False, "sgd", True, None),
        (True, "sgd", False, "needs train_head.method: probe"),
        (True, "probe", True, "set finetune.enabled: false or train_head.refit: false"),
    ],
)
def test_a_refitted_head_excludes_finetune(refit, method, finetune_enabled, error):
    """One rule for both stages: train_head checks params.yaml, finetune the head checkpoint."""
    settings = dict(refit=refit, method=method, finetune_enabled=finetune_enabled)
    if error is None:
        check_refit(**settings)
    else:
        with pytest.raises(UserError, match=error):
            check_refit(**settings)
