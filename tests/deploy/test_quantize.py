"""The INT8 recipe's parts: which photos calibrate, which layers stay FP32, bias correction."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from snakeid.deploy.quantize import QuantizeConfig, _edge_nodes, calibration_rows, quantize
from snakeid.model.onnx_export import export_onnx
from snakeid.model.onnxio import ort_session

SIZE = 32


def _rows(counts: dict[str, int], photos_per_observation: int = 2) -> list[dict[str, str]]:
    rows = []
    for taxon, n in counts.items():
        for i in range(n):
            obs = f"{taxon}-{i // photos_per_observation}"
            rows.append({"taxon": taxon, "observation_id": obs, "path": f"{taxon}/{i}.jpg"})
    return rows


def test_stratified_calibration_covers_every_species_and_observation_first():
    train = _rows({"common": 40, "middle": 10, "rare": 3})
    cfg = QuantizeConfig(calibration_images=9, calibration_sample="stratified")
    picked = calibration_rows(train, cfg, seed=1)
    assert [r["taxon"] for r in picked] == ["common", "middle", "rare"] * 3
    # a second photo of an observation only once every observation of its species has one
    rare = [r["observation_id"] for r in picked if r["taxon"] == "rare"]
    assert len(set(rare[:2])) == 2, rare
    common = [r["observation_id"] for r in picked if r["taxon"] == "common"]
    assert len(set(common)) == 3, common
    assert picked == calibration_rows(train, cfg, seed=1)  # deterministic
    assert picked != calibration_rows(train, cfg, seed=2)
    everything = calibration_rows(train, dataclasses.replace(cfg, calibration_images=999), 1)
    assert sorted(r["path"] for r in everything) == sorted(r["path"] for r in train)


def test_random_calibration_is_a_seeded_sample():
    train = _rows({"a": 30, "b": 30})
    cfg = QuantizeConfig(calibration_images=10, calibration_sample="random")
    assert calibration_rows(train, cfg, seed=4) == random.Random(4).sample(train, 10)


class _Chain(nn.Module):
    """Two trunks of four convolutions each, summed and pooled into a linear classifier. One
    weight of every output channel is 20x the others, so INT8 steps are coarse for the rest
    (as after folding batch norm into a convolution) and rounding them moves the output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)

        def conv(c_in: int) -> nn.Conv2d:
            conv = nn.Conv2d(c_in, 8, 3)
            with torch.no_grad():
                conv.weight[:, 0, 0, 0] *= 20
            return conv

        def trunk() -> nn.Sequential:
            return nn.Sequential(*[m for c in (3, 8, 8, 8) for m in (conv(c), nn.ReLU())])

        self.a, self.b = trunk(), trunk()
        self.classifier = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier((self.a(x) + self.b(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    path = tmp_path_factory.mktemp("chain") / "fp32.onnx"
    export_onnx(_Chain(), path, SIZE, opset=17)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((1, 3, SIZE, SIZE), np.float32) + 0.5 for _ in range(16)]
    return path, calibration


def test_fp32_input_layers_keeps_that_many_convolutions_of_every_trunk(chain):
    path, _ = chain
    convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    first = {n: i % 4 for i, n in enumerate(sorted(convs))}  # depth of each conv in its trunk
    for layers in (1, 3):
        kept = [n for n in _edge_nodes(path, layers) if n in first]
        assert sorted(first[n] for n in kept) == sorted(list(range(layers)) * 2), kept
    assert "/classifier/Gemm" in _edge_nodes(path, 3)


def _outputs(path, batches):
    session = ort_session(path)
    return np.concatenate([session.run(None, {"input": x})[0] for x in batches])


def test_bias_correction_changes_only_biases_and_removes_the_mean_shift(chain, tmp_path):
    path, calibration = chain
    cfg = QuantizeConfig(calibration_images=16, keep_edges_fp32=False)
    plain, corrected = tmp_path / "plain.onnx", tmp_path / "corrected.onnx"
    quantize(path, plain, dataclasses.replace(cfg, bias_correction=False), calibration)
    quantize(path, corrected, cfg, calibration)

    def initializers(p):
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(p)).graph.initializer}

    a, b = initializers(plain), initializers(corrected)
    changed = sorted(k for k in a if not np.array_equal(a[k], b[k]))
    assert changed and all(k.endswith("_quantized") and a[k].dtype == np.int32 for k in changed)
    assert a.keys() == b.keys()
    # on other photos from the same distribution the INT8 output's mean error shrinks
    rng = np.random.default_rng(1)
    photos = [rng.standard_normal((16, 3, SIZE, SIZE), np.float32) + 0.5 for _ in range(4)]
    ref = _outputs(path, photos)
    shift = {name: np.abs((_outputs(p, photos) - ref).mean(0)).mean()
             for name, p in (("plain", plain), ("corrected", corrected))}  # fmt: skip
    assert shift["corrected"] < 0.5 * shift["plain"], shift


def _activation_scales(path) -> dict[str, float]:
    """Scale of every activation QuantizeLinear (weights are stored quantized, with no Q node)."""
    model = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and init[n.input[1]].size == 1}  # fmt: skip


@pytest.mark.parametrize("photos", [16, 13])  # 13: no stride but 1 divides it
def test_histogram_calibration_is_collected_in_strides_and_used(chain, tmp_path, photos):
    """entropy collects its histograms a few photos at a time (memory flat in the number of
    photos, as onnxruntime merges them) and its ranges are not minmax's: they clip the tails."""
    path, calibration = chain
    calibration = calibration[:photos]
    cfg = QuantizeConfig(calibration_images=photos, keep_edges_fp32=False)
    scales = {}
    for method in ("minmax", "entropy"):
        out = tmp_path / f"{method}.onnx"
        quantize(path, out, dataclasses.replace(cfg, calibrate_method=method), calibration)
        scales[method] = _activation_scales(out)
    assert scales["minmax"].keys() == scales["entropy"].keys()
    tighter = [t for t in scales["minmax"] if scales["entropy"][t] < 0.99 * scales["minmax"][t]]
    assert tighter, scales
    assert all(scales["entropy"][t] <= scales["minmax"][t] * 1.01 for t in scales["minmax"])


def test_calibration_reader_strides_divide_the_photos():
    from snakeid.deploy.quantize import _Calibration

    for n, stride in ((100, 10), (16, 8), (13, 1), (7, 7), (1, 1)):
        reader = _Calibration([np.full((1,), i, np.float32) for i in range(n)])
        assert reader.stride() == stride
        seen = []
        for start in range(0, n, stride):
            reader.set_range(start, start + stride)
            while (x := reader.get_next()) is not None:
                seen.append(int(x["input"][0]))
        assert seen == list(range(n))
