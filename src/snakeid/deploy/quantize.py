"""INT8 quantization with ONNX Runtime, checked against the FP32 model it came from.

Static QDQ (per-channel int8 weights, uint8 activations calibrated on training photos through the
shared eval transform) is the default: on this CNN it is both faster and more faithful than dynamic
quantization, which only quantizes weights and leaves every convolution's activations in FP32.
The recipe (stratified calibration photos, entropy-calibrated activation ranges, the first three
layers of each trunk in FP32, bias correction) was chosen on real photos by bench/int8.py. If
quantization or the INT8 model fails, or the INT8 model is not good enough by the thresholds in
params (judged by confidence bounds: `check_int8` in quantize_checks.py, with the FP32 comparison),
this stage fails: there is no silent fallback to FP32.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snakeid.config import spec
from snakeid.contract import INPUT_NAME
from snakeid.model.onnxio import ort_session

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeConfig:
    method: str = field(default="static", metadata=spec(choices=("static", "dynamic")))
    calibration_images: int = field(default=100, metadata=spec(ge=1))
    # Which training photos: random, or stratified (species in turn, one observation each
    # before a second photo of any; the rare species are then covered too).
    calibration_sample: str = field(
        default="stratified", metadata=spec(choices=("random", "stratified"))
    )
    # entropy (ranges that keep each activation's histogram, KL-closest): on real photos the
    # INT8 model agrees with FP32 on 98-99 % of test photos, against 97.8 % by minmax
    # (bench/int8.md). Histograms are collected `CALIBRATION_STRIDE` photos at a time, so memory
    # stays flat in the number of photos; it costs memory and time all the same: the demo's
    # stage peaks at 4.8 GB in 60 s, against 2.2 GB in 28 s by minmax.
    calibrate_method: str = field(
        default="entropy", metadata=spec(choices=("minmax", "entropy", "percentile"))
    )
    per_channel: bool = True
    # Activation type: uint8 (U8S8: ONNX Runtime fuses every convolution into QLinearConv on
    # x86, about 2x faster than FP32) or int8 (S8S8: depthwise convolutions are left as
    # DequantizeLinear → FP32 Conv → QuantizeLinear, slower than FP32 at batch 1).
    activations: str = field(default="uint8", metadata=spec(choices=("int8", "uint8")))
    # The first layers (raw pixels in) and the classifier and unknown score (logits out) are
    # the layers INT8 hurts most and cost least: keep them in FP32.
    keep_edges_fp32: bool = True
    # with keep_edges_fp32: how many weighted layers from the input stay FP32 (1: the first
    # convolution of each trunk; 3 (on real photos KL(FP32 || INT8) -28 %, same latency): the
    # first block after it too)
    fp32_input_layers: int = field(default=3, metadata=spec(ge=1))
    # static: take the expected shift that rounding its weights causes off each convolution's
    # bias (`_correct_biases`)
    bias_correction: bool = True
    min_agreement: float = field(default=0.95, metadata=spec(ge=0.0, le=1.0))
    max_accuracy_drop: float = field(default=0.03, metadata=spec(ge=0.0, le=1.0))
    latency_runs: int = field(default=30, metadata=spec(ge=1))


def calibration_rows(
    train: Sequence[dict[str, str]], cfg: QuantizeConfig, seed: int
) -> list[dict[str, str]]:
    """The training photos whose activations set the INT8 ranges (`cfg.calibration_images`)."""
    rng = random.Random(seed)
    n = min(cfg.calibration_images, len(train))
    if cfg.calibration_sample == "random":
        return rng.sample(list(train), n)
    # stratified: per species, its observations shuffled, one photo of each in turn
    by_species: dict[str, dict[str, list[dict[str, str]]]] = {}
    for r in train:
        by_species.setdefault(r["taxon"], {}).setdefault(r["observation_id"], []).append(r)
    queues = []
    for taxon in sorted(by_species):
        groups = list(by_species[taxon].values())
        rng.shuffle(groups)
        for g in groups:
            rng.shuffle(g)
        queues.append(_round_robin(groups))
    return _round_robin(queues)[:n]


def _round_robin(lists: Sequence[Sequence[Any]]) -> list[Any]:
    """The first item of each list, then the second of each, and so on."""
    return [x[i] for i in range(max(map(len, lists), default=0)) for x in lists if i < len(x)]


CALIBRATION_STRIDE = 10  # photos whose activations the histogram methods hold at once


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over preprocessed batches, with the ranges
    its strided collection asks for (`set_range`)."""

    def __init__(self, batches: Sequence[np.ndarray]):
        self._batches = list(batches)
        self._it: Iterator[np.ndarray] = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x}

    def stride(self) -> int:
        """The most batches, up to `CALIBRATION_STRIDE`, that divide them evenly (as onnxruntime
        requires)."""
        n = len(self._batches)
        return next(s for s in range(min(CALIBRATION_STRIDE, n), 0, -1) if n % s == 0)


def quantize(
    fp32: Path, int8: Path, cfg: QuantizeConfig, calibration: Sequence[np.ndarray]
) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    int8.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, _quiet_onnxruntime():
        # Shape inference + graph clean-up first, as ONNX Runtime recommends before quantizing.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        exclude = _edge_nodes(prepared, cfg.fp32_input_layers) if cfg.keep_edges_fp32 else []
        if cfg.method == "dynamic":
            quantize_dynamic(
                str(prepared),
                str(int8),
                weight_type=QuantType.QInt8,
                per_channel=cfg.per_channel,
                nodes_to_exclude=exclude,
            )
            return
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[cfg.calibrate_method]
        reader = _Calibration(calibration)
        # a few photos at a time: ranges and histograms merge over the strides (the option
        # applies to every calibration method, despite its name)
        strided = {"CalibStridedMinMax": reader.stride()}
        quantize_static(
            str(prepared),
            str(int8),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            activation_type=QuantType.QUInt8 if cfg.activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=exclude,
            extra_options=strided,
        )
        if cfg.bias_correction:
            _correct_biases(prepared, int8, calibration)


WEIGHTED = ("Conv", "Gemm", "MatMul")


def _edge_nodes(path: Path, input_layers: int = 1) -> list[str]:
    """Names of the first `input_layers` weighted nodes (Conv/Gemm/MatMul) on every path from
    the input (1: each trunk's first convolution, which reads raw pixels, maybe resized), and of
    the last one on every path to an output with every node after it: the classifier, and the
    unknown-species score (its similarity to the bank, softmax and per-class offsets), which
    stays FP32 whole."""
    import onnx

    graph = onnx.load(str(path)).graph
    if not any(n.op_type in WEIGHTED for n in graph.node):
        return []
    first = _walk(graph.node, {i.name for i in graph.input}, layers=input_layers)
    tail = _walk(graph.node[::-1], {o.name for o in graph.output}, backwards=True)
    return [*dict.fromkeys([*first, *tail])]


def _walk(
    nodes: Sequence[Any], reached: set[str], *, backwards: bool = False, layers: int = 1
) -> list[str]:
    """Walk `nodes` (topologically sorted, or reversed with `backwards`) from the tensors
    `reached` until `layers` weighted nodes are passed on a path: forwards, the weighted nodes
    met on the way; backwards, those and every node passed on the way."""
    depth = dict.fromkeys(reached, 0)  # weighted nodes passed on the way to a tensor (most)
    found = []
    for node in nodes:
        ins, outs = (node.output, node.input) if backwards else (node.input, node.output)
        passed = [depth[t] for t in ins if t in depth]
        if not passed:
            continue
        d = max(passed)
        if node.op_type in WEIGHTED:
            found.append(node.name)
            d += 1
            if d >= layers:
                continue
        elif backwards:
            found.append(node.name)
        depth.update(dict.fromkeys(outs, d))
    return found


def _correct_biases(fp32: Path, int8: Path, calibration: Sequence[np.ndarray]) -> None:
    """Bias correction (Nagel et al. 2019, Data-Free Quantization, section 4.2): rounding a
    convolution's weights to INT8 moves its expected output by (Q(W) - W) E[x]. That shift, with
    E[x] the per-channel input means of the FP32 model `fp32` over the calibration batches, is
    taken off the INT8 bias of every quantized convolution of `int8` (rewritten in place). On
    real photos it cut KL(FP32 || INT8) of the class probabilities by 60 % (bench/int8.md)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(int8))
    init = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    reference = onnx.load(str(fp32))
    weights = {i.name: i for i in reference.graph.initializer}
    convs = {n.name: n for n in reference.graph.node if n.op_type == "Conv"}

    def dequantized(tensor: str) -> Any:
        node = producer.get(tensor)
        ok = node is not None and node.op_type == "DequantizeLinear" and node.input[0] in init
        return node if ok else None

    todo = []  # (FP32 conv, its INT8 weight's and bias's DequantizeLinear)
    for node in model.graph.node:
        if node.op_type == "Conv" and node.name in convs and len(node.input) == 3:
            w, b = dequantized(node.input[1]), dequantized(node.input[2])
            if w is not None and b is not None:
                todo.append((convs[node.name], w, b))
    if not todo:
        return
    means = _input_means(reference, [conv.input[0] for conv, _, _ in todo], calibration)
    array = numpy_helper.to_array
    for conv, w_node, b_node in todo:
        w = array(weights[conv.input[1]])
        scale = array(init[w_node.input[1]]).reshape(-1, *[1] * (w.ndim - 1))
        zero = array(init[w_node.input[2]]).astype(np.float32).reshape(scale.shape)
        error = ((array(init[w_node.input[0]]).astype(np.float32) - zero) * scale - w).sum(
            axis=tuple(range(2, w.ndim))
        )  # (C_out, C_in / groups): summed over the kernel
        groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
        shift = np.einsum(
            "goi,gi->go",
            error.reshape(groups, -1, error.shape[1]),
            means[conv.input[0]].reshape(groups, -1),
        ).reshape(-1)
        q_bias, b_scale = array(init[b_node.input[0]]), array(init[b_node.input[1]])
        corrected = np.round(q_bias - shift / b_scale).astype(q_bias.dtype)
        init[b_node.input[0]].CopyFrom(numpy_helper.from_array(corrected, b_node.input[0]))
    onnx.save(model, str(int8))


def _input_means(
    model: Any, tensors: Sequence[str], batches: Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """Per-channel means (axis 1) of `tensors` of an ONNX model over every photo of `batches`."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy with more outputs
    names = list(dict.fromkeys(tensors))
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
        for t in names
        if t not in have
    )
    sums: dict[str, Any] = dict.fromkeys(names, 0.0)
    counts = dict.fromkeys(names, 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "means.onnx"
        onnx.save(model, str(path))
        session = ort_session(path)
        for x in batches:
            for name, out in zip(names, session.run(names, {INPUT_NAME: x}), strict=True):
                sums[name] = sums[name] + out.sum(axis=(0, *range(2, out.ndim)))
                counts[name] += out.size // out.shape[1]
    return {name: sums[name] / counts[name] for name in names}


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """ONNX Runtime's quantizer logs one INFO line per adjusted scale on the root logger, and its
    histogram calibrators print progress on stdout (here: logged at DEBUG)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        root.setLevel(level)
        for line in printed.getvalue().splitlines():
            _logger.debug("onnxruntime: %s", line)
