"""Stage evaluate: test-split metrics, per-species report, confusion matrix and predictions; the
unknown-species flag on the test photos and on the photos of species held out of training.

The model runs in the feature cache's engine (`data.feature_engine`: ONNX Runtime FP32 on the
CPU, which export_onnx checks against PyTorch to 1e-3 in logits)."""

import argparse
from pathlib import Path

from snakeid.config import section
from snakeid.data.dataset import DataConfig
from snakeid.data.manifest import read_manifest
from snakeid.data.split import UNKNOWN, model_species
from snakeid.model.checkpoint import load_checkpoint
from snakeid.model.deployed import deployed
from snakeid.model.engine import feature_engine, prefix_engine
from snakeid.model.openset import UnknownScore
from snakeid.model.runtime import resolve_device, seed_everything, set_threads
from snakeid.stage import run_stage, stage_inputs
from snakeid.train.evaluate import (
    EvaluateConfig,
    evaluate,
    headline,
    per_species_rows,
    predict_scores,
    prediction_rows,
    tradeoff_rows,
)
from snakeid.train.plots import plot_confusion, plot_per_species_f1, plot_tradeoff
from snakeid.utils import write_csv, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True, help="headline numbers (DVC metrics)")
    ap.add_argument("--report", type=Path, required=True, help="every number (JSON)")
    ap.add_argument("--per-species", type=Path, required=True, help="per-species scores (CSV)")
    ap.add_argument("--confusion", type=Path, required=True, help="actual,predicted CSV")
    ap.add_argument("--predictions", type=Path, required=True, help="per-photo top-3 CSV")
    ap.add_argument("--confusion-png", type=Path, required=True)
    ap.add_argument("--f1-png", type=Path, required=True)
    ap.add_argument("--tradeoff", type=Path, required=True, help="venomous rule at every threshold")
    ap.add_argument("--tradeoff-chosen", type=Path, required=True, help="... at the model's")
    ap.add_argument("--tradeoff-png", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    inputs = stage_inputs(args.params)
    params, base = inputs.params, inputs.base
    species, unknown = model_species(params, inputs.species)  # the model's classes, held out
    cfg = section(params, "evaluate", EvaluateConfig)
    data = section(params, "data", DataConfig)
    seed_everything(base.seed, base.deterministic)
    set_threads(base.threads)
    device = resolve_device(base.device)

    net, ckpt = load_checkpoint(args.model, species)
    size = ckpt.image_size
    engine = feature_engine(data.feature_engine, device)
    unknown_score = UnknownScore.from_checkpoint(ckpt)
    model = deployed(
        net, temperature=ckpt.temperature, tta_flip=ckpt.tta_flip, openset=unknown_score.module()
    )
    with prefix_engine(model, engine, device, size) as run:
        ev = evaluate(
            lambda rows: predict_scores(run, rows, size),
            read_manifest(args.split / "test.csv"),
            read_manifest(args.split / "train.csv"),
            species,
            cfg,
            seed=base.seed,
            calibration=ckpt.calibration,
            unknown_threshold=unknown_score.threshold,
            unknown_rows=read_manifest(args.split / f"{UNKNOWN}.csv"),
            unknown_species=unknown,
        )
    metrics = ev.metrics
    write_json(args.report, metrics)
    write_json(args.metrics, headline(metrics))
    write_csv(args.per_species, per_species_rows(metrics))
    threshold = ckpt.venomous_threshold
    preds = prediction_rows(ev, species)
    write_csv(args.predictions, preds)
    write_csv(args.confusion, [{"actual": p["actual"], "predicted": p["predicted"]} for p in preds])
    plot_confusion(ev, species, args.confusion_png)
    plot_per_species_f1(metrics, args.f1_png)
    curve, chosen = tradeoff_rows(ev, species, threshold)
    write_csv(args.tradeoff, curve)
    write_csv(args.tradeoff_chosen, [chosen])
    plot_tradeoff(curve, chosen, args.tradeoff_png)


if __name__ == "__main__":
    run_stage(main)
