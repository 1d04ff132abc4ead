"""Stage quantize: INT8 ONNX model, compared with FP32 for size, latency and test predictions."""

import argparse
import logging
from pathlib import Path

import numpy as np

from snakeid.config import section
from snakeid.contract import load_meta
from snakeid.data.dataset import eval_batches
from snakeid.data.manifest import read_manifest
from snakeid.data.split import UNKNOWN, model_species
from snakeid.deploy.quantize import QuantizeConfig, calibration_rows, quantize
from snakeid.deploy.quantize_checks import HEADLINE, check_int8, compare, latencies
from snakeid.stage import run_stage, stage_inputs
from snakeid.taxa import label_index
from snakeid.train.evaluate import Evaluation, evaluable, prediction_rows, verdict_causes
from snakeid.utils import write_csv, write_json

_logger = logging.getLogger("quantize")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--onnx", type=Path, required=True, help="FP32 model")
    ap.add_argument("--meta", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--int8", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True, help="headline numbers (DVC metrics)")
    ap.add_argument("--report", type=Path, required=True, help="every number (JSON)")
    ap.add_argument("--predictions", type=Path, required=True, help="per-photo INT8 top-3 CSV")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    inputs = stage_inputs(args.params)
    params, base = inputs.params, inputs.base
    species, _ = model_species(params, inputs.species)  # the model's classes
    cfg = section(params, "quantize", QuantizeConfig)
    meta = load_meta(args.meta)
    size = meta.preprocess.crop

    train = read_manifest(args.split / "train.csv")
    calib = calibration_rows(train, cfg, base.seed)
    quantize(args.onnx, args.int8, cfg, eval_batches(calib, species, size, batch_size=1))

    test, _ = evaluable(read_manifest(args.split / "test.csv"), train)
    index = label_index(species)
    y = np.array([index[r["taxon"]] for r in test])
    heldout = read_manifest(args.split / f"{UNKNOWN}.csv")  # photos of held-out species
    unknown_threshold = meta.unknown_threshold
    result, probs, unknown = compare(
        args.onnx, args.int8, eval_batches(test, species, size), y, sorted(set(y.tolist())),
        threads=base.threads, unknown_threshold=unknown_threshold,
        heldout=eval_batches(heldout, None, size) if heldout else (),
    )  # fmt: skip
    result |= {"method": cfg.method, "calibration_images": len(calib), "n_heldout": len(heldout)}
    write_json(args.report, result)
    write_json(args.metrics, {k: result[k] for k in HEADLINE})
    cause = verdict_causes(probs, unknown, species, meta.decision, unknown_threshold)
    rows = prediction_rows(
        Evaluation({}, test, probs, y, unknown, unknown_threshold, cause), species
    )
    write_csv(args.predictions, rows)
    check_int8(result, cfg)  # after writing, so a failing model leaves its evidence
    t = latencies(args.onnx, args.int8, image_size=size, threads=base.threads,
                  runs=cfg.latency_runs)  # fmt: skip
    _logger.info(
        "INT8: agreement %.3f, size ×%.2f; batch-1 %.1f ms vs FP32 %.1f ms (×%.2f), "
        "batch-32 ×%.2f (this run's timing; not a metric)",
        result["top1_agreement"], result["size_ratio"], t["int8_batch1_ms"],
        t["fp32_batch1_ms"], t["ratio_batch1"], t["ratio_batch32"],
    )  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
