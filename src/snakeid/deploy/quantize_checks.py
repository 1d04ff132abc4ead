"""The INT8 model judged against the FP32 model it came from: predictions, agreement, the gate
that fails the quantize stage (`check_int8`), and latency for the log.

Apart from quantize.py, which makes the INT8 model: these only run both models and compare them,
and bench/ uses them on models the pipeline did not make.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from snakeid.contract import INPUT_NAME, OUTPUT_NAME, UNKNOWN_NAME
from snakeid.deploy.quantize import QuantizeConfig
from snakeid.errors import UserError
from snakeid.model.calibration import softmax
from snakeid.model.decision import flagged_unknown
from snakeid.model.onnxio import ort_session


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
    """Fail only when the INT8 model is worse than the bars with 95 % confidence: the one-sided
    bounds of `compare` (a point estimate on 75 photos moves 1.3 points per photo, and floats
    differ by CPU kind)."""
    problems = []
    if result["top1_agreement_upper95"] < cfg.min_agreement:
        problems.append(
            f"top-1 agreement with FP32 {result['top1_agreement']:.3f} on "
            f"{result['agreement_photos']} held-out photos (95 % upper bound "
            f"{result['top1_agreement_upper95']:.3f}) < {cfg.min_agreement}"
        )
    if result["accuracy_drop_lower95"] > cfg.max_accuracy_drop:
        problems.append(
            f"accuracy drop {-result['accuracy_delta']:.3f} on {result['n_test']} test photos "
            f"(95 % lower bound {result['accuracy_drop_lower95']:.3f}) > {cfg.max_accuracy_drop}"
        )
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
    the same on every run; see `latencies`). Both agreements are also measured on `heldout`,
    batches of photos of the species held out of training (the photos the flag exists for), and
    judged on every photo together; the gate's bounds (`check_int8`) come with them.

    Returns the report and the INT8 model's probabilities (N, C) and unknown scores (N,) of the
    test batches.
    """
    from snakeid.model.metrics import binomial_bound, macro_f1

    result: dict[str, Any] = {}
    n = len(y)  # the test photos; the held-out species' photos follow them
    probs, top1, unknown = {}, {}, {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = ort_session(path, threads)
        every, unknown[name] = run_probs(session, [*batches, *heldout])
        probs[name], top1[name] = every[:n], every.argmax(1)
        pred = top1[name][:n]
        result[name] = {
            "bytes": path.stat().st_size,
            "accuracy": float((pred == y).mean()),
            "macro_f1": macro_f1(y, pred, labels),
        }
    # both agreements on every photo they are judged on: known test photos, then held-out
    # species' photos
    flags = {name: flagged_unknown(scores, unknown_threshold) for name, scores in unknown.items()}
    same_top1 = top1["fp32"] == top1["int8"]
    for key, agree in (
        ("top1_agreement", same_top1),
        ("unknown_flag_agreement", flags["fp32"] == flags["int8"]),
    ):
        result[key] = float(agree.mean())
        result[f"{key}_test"] = float(agree[:n].mean())
        result[f"{key}_heldout"] = float(agree[n:].mean()) if heldout else None
    result["agreement_photos"] = len(same_top1)
    result["top1_agreement_upper95"] = binomial_bound(
        int(same_top1.sum()), len(same_top1), upper=True
    )
    right = {name: top1[name][:n] == y for name in top1}
    result["accuracy_drop_lower95"] = _drop_lower_bound(right["fp32"], right["int8"])
    result["n_test"] = n
    result["max_abs_unknown_score_diff"] = float(np.abs(unknown["fp32"] - unknown["int8"]).max())
    result["size_ratio"] = result["int8"]["bytes"] / result["fp32"]["bytes"]
    result["accuracy_delta"] = result["int8"]["accuracy"] - result["fp32"]["accuracy"]
    return result, probs["int8"], unknown["int8"][:n]


def _drop_lower_bound(fp32_right: np.ndarray, int8_right: np.ndarray) -> float:
    """One-sided 95 % lower bound on FP32 accuracy minus INT8 accuracy, paired by photo: of the
    d photos only one model gets right, b are FP32's; given d, b is binomial, and the drop is
    (2b - d) / n (exact, as McNemar's test)."""
    from snakeid.model.metrics import binomial_bound

    b = int((fp32_right & ~int8_right).sum())
    d = b + int((~fp32_right & int8_right).sum())
    b_low = d * binomial_bound(b, d, upper=False)
    return max(0.0, (2 * b_low - d) / len(fp32_right))


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
    out = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = ort_session(path, threads)
        out[f"{name}_batch1_ms"] = latency_ms(session, image_size, 1, runs)
        out[f"{name}_batch32_ms"] = latency_ms(session, image_size, 32, max(3, runs // 10))
    for b in ("batch1", "batch32"):
        out[f"ratio_{b}"] = out[f"int8_{b}_ms"] / out[f"fp32_{b}_ms"]
    return out
