"""INT8 quantization with ONNX Runtime, checked against the FP32 model it came from.

Static QDQ (per-channel int8 weights, uint8 activations calibrated on training photos through the
shared eval transform) is the default: on this CNN it is both faster and more faithful than dynamic
quantization, which only quantizes weights and leaves every convolution's activations in FP32.
If quantization or the INT8 model fails, or the INT8 model is not good enough by the thresholds
in params, this stage fails: there is no silent fallback to FP32.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snakeid.calibration import flagged_unknown, softmax
from snakeid.config import spec
from snakeid.errors import UserError
from snakeid.export import INPUT_NAME, OUTPUT_NAME, UNKNOWN_NAME

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeConfig:
    method: str = field(default="static", metadata=spec(choices=("static", "dynamic")))
    calibration_images: int = field(default=100, metadata=spec(ge=1))
    # minmax: cheap in time and memory at any number of photos, and as faithful as percentile or
    # entropy on this model (bench/results.md); the histogram methods hold every activation of
    # every calibration photo (GBs) and fail on some untrained models.
    calibrate_method: str = field(
        default="minmax", metadata=spec(choices=("minmax", "entropy", "percentile"))
    )
    per_channel: bool = True
    # Activation type: uint8 (U8S8: ONNX Runtime fuses every convolution into QLinearConv on
    # x86, about 2x faster than FP32) or int8 (S8S8: depthwise convolutions are left as
    # DequantizeLinear → FP32 Conv → QuantizeLinear, slower than FP32 at batch 1).
    activations: str = field(default="uint8", metadata=spec(choices=("int8", "uint8")))
    # The first convolution (raw pixels in) and the classifier (logits out) are the layers
    # INT8 hurts most and cost least: keep them in FP32.
    keep_edges_fp32: bool = True
    min_agreement: float = field(default=0.95, metadata=spec(ge=0.0, le=1.0))
    max_accuracy_drop: float = field(default=0.03, metadata=spec(ge=0.0, le=1.0))
    latency_runs: int = field(default=30, metadata=spec(ge=1))


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, batches: Sequence[np.ndarray]):
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x}


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
    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        # Shape inference + graph clean-up first, as ONNX Runtime recommends before quantizing.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        exclude = _edge_nodes(prepared) if cfg.keep_edges_fp32 else []
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
        quantize_static(
            str(prepared),
            str(int8),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            activation_type=QuantType.QUInt8 if cfg.activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=exclude,
        )


WEIGHTED = ("Conv", "Gemm", "MatMul")


def _edge_nodes(path: Path) -> list[str]:
    """Names of the first weighted node (Conv/Gemm/MatMul) on every path from the input (one
    per trunk: each reads raw pixels, maybe resized), and of the last one on every path to an
    output with every node after it: the classifier, and the unknown-species score (its
    similarity to the bank, softmax and per-class offsets), which stays FP32 whole."""
    import onnx

    graph = onnx.load(str(path)).graph
    if not any(n.op_type in WEIGHTED for n in graph.node):
        return []
    first = _walk(graph.node, {i.name for i in graph.input})
    tail = _walk(graph.node[::-1], {o.name for o in graph.output}, backwards=True)
    return [*dict.fromkeys([*first, *tail])]


def _walk(nodes: Sequence[Any], reached: set[str], *, backwards: bool = False) -> list[str]:
    """Walk `nodes` (topologically sorted, or reversed with `backwards`) from the tensors
    `reached`, through unweighted nodes only: forwards, the weighted nodes met first; backwards,
    those and every node passed on the way."""
    found = []
    for node in nodes:
        ins, outs = (node.output, node.input) if backwards else (node.input, node.output)
        if not reached.intersection(ins):
            continue
        if node.op_type in WEIGHTED:
            found.append(node.name)
        else:
            reached.update(outs)
            if backwards:
                found.append(node.name)
    return found


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer logs one INFO line per adjusted scale on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def latency_ms(session: Any, image_size: int, batch: int, runs: int) -> float:
    """Median wall time of one `session.run` on a fixed random batch, after warm-up."""
    x = (
        np.random.default_rng(0)
        .standard_normal((batch, 3, image_size, image_size))
        .astype(np.float32)
    )
    for _ in range(3):
        session.run(None, {INPUT_NAME: x})  # every output: what a user runs
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {INPUT_NAME: x})  # every output: what a user runs
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def run_probs(session: Any, batches: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, C) and unknown-species scores (N,) of a deployed model."""
    out = [session.run([OUTPUT_NAME, UNKNOWN_NAME], {INPUT_NAME: x}) for x in batches]
    return softmax(np.concatenate([o[0] for o in out])), np.concatenate([o[1] for o in out])


def check_int8(result: dict[str, Any], cfg: QuantizeConfig) -> None:
    problems = []
    if result["top1_agreement"] < cfg.min_agreement:
        problems.append(
            f"top-1 agreement with FP32 {result['top1_agreement']:.3f} < {cfg.min_agreement}"
        )
    drop = -result["accuracy_delta"]
    if drop > cfg.max_accuracy_drop:
        problems.append(f"accuracy drop {drop:.3f} > {cfg.max_accuracy_drop}")
    if problems:
        raise UserError(
            f"INT8 model ({cfg.method}) is not good enough: {'; '.join(problems)} "
            "(see reports/quantize.json; try quantize.calibrate_method or more calibration_images)"
        )


def compare(
    fp32: Path,
    int8: Path,
    batches: Sequence[np.ndarray],
    y: np.ndarray,
    labels: Sequence[int],
    *,
    threads: int,
    unknown_threshold: float,
    heldout: Sequence[np.ndarray] = (),
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """FP32 vs INT8 on the same preprocessed test batches: size, accuracy, agreement of the
    top-1 and of the unknown-species flag (no timings: this report is a DVC metric and must be
    the same on every run; see `latencies`). The flag is also compared on `heldout`, batches of
    photos of the species held out of training: the photos it exists for.

    Returns the report and the INT8 model's probabilities (N, C) and unknown scores (N,) of the
    test batches.
    """
    from snakeid.export import ort_session
    from snakeid.metrics import macro_f1

    result: dict[str, Any] = {}
    n = len(y)  # the test photos; the held-out species' photos follow them
    probs, unknown = {}, {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = ort_session(path, threads)
        every, unknown[name] = run_probs(session, [*batches, *heldout])
        probs[name] = every[:n]
        pred = probs[name].argmax(1)
        result[name] = {
            "bytes": path.stat().st_size,
            "accuracy": float((pred == y).mean()),
            "macro_f1": macro_f1(y, pred, labels),
        }
    result["top1_agreement"] = float((probs["fp32"].argmax(1) == probs["int8"].argmax(1)).mean())
    # the flag on every photo it is judged on: known test photos, then held-out species' photos
    flags = {name: flagged_unknown(scores, unknown_threshold) for name, scores in unknown.items()}
    agree = flags["fp32"] == flags["int8"]
    result["unknown_flag_agreement"] = float(agree.mean())
    result["unknown_flag_agreement_test"] = float(agree[:n].mean())
    result["unknown_flag_agreement_heldout"] = float(agree[n:].mean()) if heldout else None
    result["max_abs_unknown_score_diff"] = float(np.abs(unknown["fp32"] - unknown["int8"]).max())
    result["size_ratio"] = result["int8"]["bytes"] / result["fp32"]["bytes"]
    result["accuracy_delta"] = result["int8"]["accuracy"] - result["fp32"]["accuracy"]
    return result, probs["int8"], unknown["int8"][:n]


HEADLINE = (
    "top1_agreement",
    "unknown_flag_agreement",
    "size_ratio",
    "accuracy_delta",
)  # quantize's DVC metrics


def latencies(
    fp32: Path, int8: Path, *, image_size: int, threads: int, runs: int
) -> dict[str, float]:
    """Median batch-1 and batch-32 latency (ms) of both models and INT8's ratios to FP32.

    For the log: they change run to run (bench/latency.py compares models side by side)."""
    from snakeid.export import ort_session

    out = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = ort_session(path, threads)
        out[f"{name}_batch1_ms"] = latency_ms(session, image_size, 1, runs)
        out[f"{name}_batch32_ms"] = latency_ms(session, image_size, 32, max(3, runs // 10))
    for b in ("batch1", "batch32"):
        out[f"ratio_{b}"] = out[f"int8_{b}_ms"] / out[f"fp32_{b}_ms"]
    return out
