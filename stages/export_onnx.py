"""Stage export_onnx: ONNX FP32 model, checked against PyTorch on test photos; model_meta.json
(the serving interface and provenance) and MODEL_CARD.md."""

import argparse
import json
import logging
from pathlib import Path

from snakeid.config import section
from snakeid.data.dataset import eval_batches
from snakeid.data.manifest import read_manifest
from snakeid.data.split import model_species
from snakeid.deploy.card import bench_evidence, data_provenance, model_card
from snakeid.model.checkpoint import load_checkpoint
from snakeid.model.deployed import deployed
from snakeid.model.export import (
    PARITY_HEADLINE,
    ExportConfig,
    check_parity,
    model_meta,
    model_region,
    parity,
)
from snakeid.model.onnx_export import export_onnx
from snakeid.model.onnxio import ort_session
from snakeid.model.openset import UnknownScore
from snakeid.model.runtime import set_threads
from snakeid.stage import run_stage, stage_inputs
from snakeid.utils import write_json

_logger = logging.getLogger("export_onnx")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--meta", type=Path, required=True)
    ap.add_argument("--card", type=Path, required=True, help="MODEL_CARD.md")
    ap.add_argument("--evaluation", type=Path, required=True, help="evaluate's headline metrics")
    ap.add_argument("--evaluation-report", type=Path, required=True, help="evaluate's report")
    ap.add_argument("--metrics", type=Path, required=True, help="parity with PyTorch (DVC metrics)")
    ap.add_argument("--report", type=Path, required=True, help="every number (JSON)")
    ap.add_argument(
        "--openset-bench",
        type=Path,
        nargs="*",
        default=[],
        help="bench/openset.py results for the model card, as NAME=PATH",
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    inputs = stage_inputs(args.params)
    params, base = inputs.params, inputs.base
    species, _ = model_species(params, inputs.species)  # the model's classes
    cfg = section(params, "export_onnx", ExportConfig)
    set_threads(base.threads)

    net, ckpt = load_checkpoint(args.model, species)
    unknown_score = UnknownScore.from_checkpoint(ckpt)
    model = deployed(
        net, temperature=ckpt.temperature, tta_flip=ckpt.tta_flip, openset=unknown_score.module()
    )
    export_onnx(model, args.onnx, ckpt.image_size, cfg.opset)
    rows = read_manifest(args.split / "test.csv")[: cfg.parity_images]
    result = parity(model, ort_session(args.onnx), eval_batches(rows, species, ckpt.image_size))
    write_json(args.report, result | {"opset": cfg.opset, "onnx_bytes": args.onnx.stat().st_size})
    write_json(args.metrics, {k: result[k] for k in PARITY_HEADLINE})
    check_parity(result, cfg)  # after writing, so a failed check leaves its evidence
    report = json.loads(args.evaluation_report.read_text())
    meta = model_meta(
        ckpt,
        cfg,
        region=model_region(inputs.region, cfg),
        unknown_score=unknown_score.describe(),
        data=data_provenance(args.split, species),
        evaluation=json.loads(args.evaluation.read_text())
        | {"venomous_lookalikes": report["venomous_lookalikes"]},
    )
    write_json(args.meta, meta.to_dict())
    evidence = [
        bench_evidence(name, json.loads(Path(path).read_text()))
        for name, path in (str(item).split("=", 1) for item in args.openset_bench)
    ]
    args.card.write_text(model_card(meta, evidence))
    _logger.info(
        "exported %s: agreement %.3f, max |diff| %.2e",
        args.onnx,
        result["top1_agreement"],
        result["max_abs_logit_diff"],
    )


if __name__ == "__main__":
    run_stage(main)
