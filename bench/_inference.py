"""Inference: PyTorch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8 (static QDQ, dynamic).

Every variant of one backbone is timed in the same rounds, round-robin, so load from other
processes hits all of them alike. Each round gives each variant a short block of calls, after a
pause and one discarded call: the thread pools of ONNX Runtime sessions and of PyTorch's OpenMP
spin-wait for a while after a run, and that spinning would otherwise steal the cores from the
next variant (measured: 2-4x slower batch-1 calls when one call of each session alternates on
2 cores). A deployed model has no such neighbours. Batch 1: median and
p95 latency; batch 32: median throughput. Thread settings (ORT intra-op and torch threads: 1 vs
all cores) and channels_last for eager are variants too: the "chosen by measurement" evidence.

"onnx int8 static" is the pipeline's `quantize` config; "onnx int8 static, other activations"
is the same with the other activation type (int8 vs uint8), the alternative it was chosen over.
"""

from __future__ import annotations

import copy
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snakeid.contract import INPUT_NAME, OUTPUT_NAME
from snakeid.deploy.quantize import QuantizeConfig, quantize
from snakeid.model.onnx_export import export_onnx
from snakeid.model.onnxio import ort_session

_logger = logging.getLogger("bench.inference")

Runner = Callable[[np.ndarray], np.ndarray]  # (B, 3, S, S) float32 → logits (B, C)
BLOCK = 5  # timed batch-1 calls per variant and round
SETTLE_S = 0.25  # pause before each block: longer than the thread pools' spin-waits
ALT = "onnx int8 static, other activations"


def cores() -> int:
    return len(os.sched_getaffinity(0))


def _eager(model: torch.nn.Module, threads: int, channels_last: bool) -> Runner:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)

    def run(x: np.ndarray) -> np.ndarray:
        torch.set_num_threads(threads)  # global: set on every call, variants are interleaved
        with torch.inference_mode():
            return model(torch.from_numpy(x).contiguous(memory_format=fmt)).numpy()

    return run


def _ort(path: Path, threads: int) -> Runner:
    session = ort_session(path, threads)

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    return run


def _p95(xs: Sequence[float]) -> float:
    return float(np.percentile(xs, 95))


def time_variants(
    variants: dict[str, Runner], x1: np.ndarray, x32: np.ndarray, rounds1: int, rounds32: int
) -> dict[str, dict[str, float]]:
    for run in variants.values():  # warm-up: first calls allocate and pick kernels
        for _ in range(2):
            run(x1)
        run(x32)
    t1: dict[str, list[float]] = {k: [] for k in variants}
    t32: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(-(-rounds1 // BLOCK)):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            time.sleep(SETTLE_S)  # the previous variant's threads stop spinning
            variants[name](x1)
            for _ in range(BLOCK):
                t = time.perf_counter()
                variants[name](x1)
                t1[name].append((time.perf_counter() - t) * 1000)
    for r in range(rounds32):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            time.sleep(SETTLE_S)
            variants[name](x1)
            t = time.perf_counter()
            variants[name](x32)
            t32[name].append(time.perf_counter() - t)
    torch.set_num_threads(cores())
    return {
        k: {
            "b1_median_ms": statistics.median(t1[k]),
            "b1_p95_ms": _p95(t1[k]),
            "b32_images_per_s": len(x32) / statistics.median(t32[k]),
        }
        for k in variants
    }


def _logits(run: Runner, batches: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([run(x) for x in batches])


def bench_backbone(
    name: str,
    model: torch.nn.Module,
    *,
    image_size: int,
    opset: int,
    quant: QuantizeConfig,
    calibration: Sequence[np.ndarray],
    test_batches: Sequence[np.ndarray],
    test_labels: np.ndarray | None,
    scratch: Path,
    rounds1: int,
    rounds32: int,
) -> dict[str, Any]:
    """Export, quantize (static and dynamic), check agreement and time every variant."""
    model = model.eval().cpu()
    fp32, int8s, int8d = (scratch / f"{name}_{k}.onnx" for k in ("fp32", "int8_static", "int8_dyn"))
    export_onnx(model, fp32, image_size, opset)
    t = time.perf_counter()
    static = replace(quant, method="static")
    calibration_error = None
    try:
        quantize(fp32, int8s, static, calibration)
    except ValueError as e:
        # e.g. percentile calibration on a constant activation (random weights): recorded in
        # the results, and calibrated by min/max instead so that latency can still be measured
        calibration_error = f"{static.calibrate_method}: {e}"
        _logger.warning("%s: static quantization failed (%s); retrying with minmax", name, e)
        static = replace(static, calibrate_method="minmax")
        quantize(fp32, int8s, static, calibration)
    static_s = time.perf_counter() - t
    quantize(fp32, int8d, replace(quant, method="dynamic"), [])
    int8a = scratch / f"{name}_int8_static_alt.onnx"
    other = "int8" if static.activations == "uint8" else "uint8"
    quantize(fp32, int8a, replace(static, activations=other), calibration)
    n = cores()
    threads = sorted({1, n})
    variants: dict[str, Runner] = {f"eager t{n}": _eager(copy.deepcopy(model), n, False)}
    for k in threads:
        variants[f"eager channels_last t{k}"] = _eager(copy.deepcopy(model), k, True)
    for k in threads:
        variants[f"onnx fp32 t{k}"] = _ort(fp32, k)
    for k in threads:
        variants[f"onnx int8 static t{k}"] = _ort(int8s, k)
    variants[f"onnx int8 dynamic t{n}"] = _ort(int8d, n)
    for k in threads:
        variants[f"{ALT} t{k}"] = _ort(int8a, k)

    # Accuracy and agreement on the demo test photos, each at all cores.
    logits = {
        "eager": _logits(variants[f"eager t{n}"], test_batches),
        "onnx fp32": _logits(variants[f"onnx fp32 t{n}"], test_batches),
        "onnx int8 static": _logits(variants[f"onnx int8 static t{n}"], test_batches),
        "onnx int8 dynamic": _logits(variants[f"onnx int8 dynamic t{n}"], test_batches),
        ALT: _logits(variants[f"{ALT} t{n}"], test_batches),
    }
    ref = logits["onnx fp32"].argmax(1)
    quality: dict[str, Any] = {"n_test": len(ref)}
    for k, v in logits.items():
        q: dict[str, Any] = {"top1_agreement_vs_onnx_fp32": float((v.argmax(1) == ref).mean())}
        if test_labels is not None:
            q["accuracy"] = float((v.argmax(1) == test_labels).mean())
        quality[k] = q
    quality["onnx_fp32_max_abs_logit_diff_vs_eager"] = float(
        np.abs(logits["onnx fp32"] - logits["eager"]).max()
    )

    x32 = np.concatenate(test_batches)
    x32 = np.concatenate([x32] * (32 // len(x32) + 1))[:32]  # (32, 3, S, S) real photos
    timing = time_variants(variants, x32[:1], x32, rounds1, rounds32)

    def best(prefix: str, key: str = "b1_median_ms") -> tuple[str, float]:
        pick = min if key.endswith("_ms") else max
        k = pick((k for k in timing if k.startswith(prefix)), key=lambda k: timing[k][key])
        return k, timing[k][key]

    eager_k, eager_ms = best("eager")
    fp32_k, fp32_ms = best("onnx fp32")
    int8_k, int8_ms = best("onnx int8 static t")
    alt_k, alt_ms = best(ALT)
    dyn_ms = timing[f"onnx int8 dynamic t{n}"]["b1_median_ms"]
    ratios = {
        # each variant at its best measured setting (threads, memory format)
        "onnx_fp32_vs_eager_b1": fp32_ms / eager_ms,
        "onnx_fp32_vs_default_eager_b1": fp32_ms / timing[f"eager t{n}"]["b1_median_ms"],
        "int8_static_vs_onnx_fp32_b1": int8_ms / fp32_ms,
        "int8_dynamic_vs_onnx_fp32_b1": dyn_ms / fp32_ms,
        "int8_static_other_activations_vs_onnx_fp32_b1": alt_ms / fp32_ms,
        "int8_static_vs_onnx_fp32_b32_throughput": best("onnx int8 static t", "b32_images_per_s")[1]
        / best("onnx fp32", "b32_images_per_s")[1],
        "int8_static_other_activations_vs_onnx_fp32_b32_throughput": best(ALT, "b32_images_per_s")[
            1
        ]
        / best("onnx fp32", "b32_images_per_s")[1],
        "eager_channels_last_vs_contiguous_b32_throughput": timing[f"eager channels_last t{n}"][
            "b32_images_per_s"
        ]
        / timing[f"eager t{n}"]["b32_images_per_s"],
    }
    return {
        "bytes": {
            "fp32": fp32.stat().st_size,
            "int8_static": int8s.stat().st_size,
            "int8_dynamic": int8d.stat().st_size,
            "int8_static_other_activations": int8a.stat().st_size,
        },
        "static_quantize_s": static_s,
        "static_calibrate_method": static.calibrate_method,
        "static_activations": static.activations,
        "other_activations": other,
        "static_calibration_error": calibration_error,
        "calibration_images": sum(len(b) for b in calibration),
        "timing": timing,
        "best": {
            "eager": eager_k,
            "onnx fp32": fp32_k,
            "onnx int8 static": int8_k,
            ALT: alt_k,
        },
        "quality": quality,
        "ratios": ratios,
    }
