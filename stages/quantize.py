"""Stage quantize: INT8 ONNX model, compared with FP32 for size, latency and test predictions."""

import argparse
import json
import logging
import random
from pathlib import Path

import numpy as np

from snakeid.config import base_config, load_params, section
from snakeid.evaluate import evaluable
from snakeid.export import eval_batches, ort_session
from snakeid.manifest import read_manifest
from snakeid.metrics import macro_f1
from snakeid.quantize import QuantizeConfig, check_int8, latency_ms, quantize, run_probs
from snakeid.stage import run_stage
from snakeid.taxa import load_species
from snakeid.utils import write_json

_logger = logging.getLogger("quantize")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--onnx", type=Path, required=True, help="FP32 model")
    ap.add_argument("--meta", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--int8", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    base = base_config(params)
    cfg = section(params, "quantize", QuantizeConfig)
    species = load_species(base.species_file)
    size = json.loads(args.meta.read_text())["image_size"]

    train = read_manifest(args.split / "train.csv")
    calib = random.Random(base.seed).sample(train, min(cfg.calibration_images, len(train)))
    quantize(args.onnx, args.int8, cfg, eval_batches(calib, species, size, batch_size=1))

    test, _ = evaluable(read_manifest(args.split / "test.csv"), train)
    index = {s.name: i for i, s in enumerate(species)}
    y = np.array([index[r["taxon"]] for r in test])
    labels = sorted(set(y.tolist()))
    batches = eval_batches(test, species, size)
    result: dict = {"method": cfg.method, "calibration_images": len(calib), "n_test": len(test)}
    sessions = {
        "fp32": ort_session(args.onnx, base.threads),
        "int8": ort_session(args.int8, base.threads),
    }
    preds = {}
    for name, sess in sessions.items():
        probs = run_probs(sess, batches)
        preds[name] = probs.argmax(1)
        result[name] = {
            "bytes": (args.onnx if name == "fp32" else args.int8).stat().st_size,
            "accuracy": float((preds[name] == y).mean()),
            "macro_f1": macro_f1(y, preds[name], labels),
            "latency_ms_batch1": latency_ms(sess, size, 1, cfg.latency_runs),
            "latency_ms_batch32": latency_ms(sess, size, 32, max(3, cfg.latency_runs // 10)),
        }
    result["top1_agreement"] = float((preds["fp32"] == preds["int8"]).mean())
    result["size_ratio"] = result["int8"]["bytes"] / result["fp32"]["bytes"]
    for b in ("batch1", "batch32"):
        result[f"latency_ratio_{b}"] = (
            result["int8"][f"latency_ms_{b}"] / result["fp32"][f"latency_ms_{b}"]
        )
    write_json(args.metrics, result)
    check_int8(result, cfg)
    _logger.info(
        "INT8: agreement %.3f, size ×%.2f, batch-1 latency ×%.2f",
        result["top1_agreement"],
        result["size_ratio"],
        result["latency_ratio_batch1"],
    )


if __name__ == "__main__":
    run_stage(main)
