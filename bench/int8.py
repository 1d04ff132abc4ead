"""INT8 recipes on real photos: top-1 agreement with FP32 and the accuracy delta, per seed.

For each seed, the real pipeline (`dvc repro export_onnx` in a fresh copy of this project, the
default params but for the folder source, the photo set's species file, no species held out and
that seed) trains and exports the FP32 model; every quantization recipe below is then applied to
that model with the pipeline's own `snakeid.deploy.quantize` and compared with it on the seed's test
photos, which neither the model nor the quantizer's calibration saw. Reported: mean ± sd over
seeds, and every seed's value.

    PATH=.venv/bin:$PATH python bench/int8.py --data ../shared/realdata/ph-snakes-dev \\
        --out bench/int8.json

The pipeline runs are kept in `--workdir` (a rerun reuses them); `--latency` also times each
recipe's batch-1 latency beside FP32's (round-robin, ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import check, make_project, run_watched  # noqa: E402
from _realdata import pooled_folder  # noqa: E402
from snakeid.config import section  # noqa: E402
from snakeid.contract import load_meta  # noqa: E402
from snakeid.data.dataset import eval_batches  # noqa: E402
from snakeid.data.manifest import read_manifest  # noqa: E402
from snakeid.data.split import model_species  # noqa: E402
from snakeid.deploy.quantize import QuantizeConfig, calibration_rows, quantize  # noqa: E402
from snakeid.deploy.quantize_checks import compare, latency_ms, run_probs  # noqa: E402
from snakeid.model.onnxio import ort_session  # noqa: E402
from snakeid.stage import stage_inputs  # noqa: E402
from snakeid.taxa import label_index  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NEAR_TIE = 0.02  # FP32's top-1 − top-2 probability below this: a photo a tiny change can flip


# name → QuantizeConfig overrides of the project's defaults. The histogram methods (entropy,
# percentile) collect CALIBRATION_STRIDE photos at a time: all 100 at once took the machine's
# 24 GB. Not here: int8 activations (S8S8: slower than FP32 at batch 1 on x86; as faithful as U8S8
# on seed 42), 300 calibration photos (no better than 100), 5 or 8 FP32 input layers (slower:
# 0.61x and 0.68x FP32 at batch 1, no more faithful than 3) and each trunk's last convolution in
# FP32 too (KL 0.0015 as without, agreement 0.9815 ± 0.0064, lowest seed 0.978 as without),
# measured by earlier runs of this script.
def _recipe(
    sample: str, input_layers: int, bias_correction: bool, method: str = "minmax"
) -> dict[str, Any]:
    return {
        "calibration_images": 100,
        "calibration_sample": sample,
        "fp32_input_layers": input_layers,
        "bias_correction": bias_correction,
        "calibrate_method": method,
    }


RECIPES: dict[str, dict[str, Any]] = {
    "random_100": _recipe("random", 1, False),  # the recipe before bench/int8.py
    "stratified_100": _recipe("stratified", 1, False),
    "stratified_100_fp32_in3": _recipe("stratified", 3, False),
    "random_100_bias_corrected": _recipe("random", 1, True),
    "stratified_100_bias_corrected": _recipe("stratified", 1, True),
    "stratified_100_fp32_in3_bias_corrected": _recipe("stratified", 3, True),
    "stratified_100_fp32_in3_bias_corrected_percentile": _recipe(
        "stratified", 3, True, "percentile"
    ),
    "stratified_100_fp32_in3_bias_corrected_entropy": _recipe("stratified", 3, True, "entropy"),
}


def pipeline(data: Path, work: Path, seed: int) -> Path:
    """The project after `dvc repro export_onnx` on `data` with `seed` (reused when done)."""
    root = work / f"seed-{seed}"
    if (root / "models/model_fp32.onnx").exists():
        return root
    species_file = data / "species.yaml"
    folder = pooled_folder(data, work / "pool")
    root.mkdir(parents=True, exist_ok=True)
    make_project(
        REPO,
        root,
        {
            "base": {"seed": seed, "species_file": str(species_file)},
            "download": {"source": "folder", "folder": str(folder)},
            "split": {"unknown_species": []},
        },
    )
    t = time.monotonic()
    check(run_watched(["dvc", "repro", "export_onnx"], root, root / "repro.log"))
    print(f"seed {seed}: pipeline {time.monotonic() - t:.0f} s", flush=True)
    return root


def measure(root: Path, recipes: dict[str, dict[str, Any]], latency: bool) -> dict[str, Any]:
    os.chdir(root)  # manifests hold paths relative to the project root
    inputs = stage_inputs(root / "params.yaml")
    species, _ = model_species(inputs.params, inputs.species)
    base_cfg = section(inputs.params, "quantize", QuantizeConfig)
    meta = load_meta(root / "models/model_meta.json")
    size = meta.preprocess.crop
    fp32 = root / "models/model_fp32.onnx"
    train = read_manifest(root / "data/split/train.csv")
    test = read_manifest(root / "data/split/test.csv")
    index = label_index(species)
    y = np.array([index[r["taxon"]] for r in test])
    batches = eval_batches(test, species, size)
    reference = run_probs(ort_session(fp32), batches)[0]
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # FP32's top-1 minus top-2 probability, per photo
    out: dict[str, Any] = {"n_test": len(test), "near_ties": int((margin < NEAR_TIE).sum())}
    for name, overrides in recipes.items():
        cfg = dataclasses.replace(base_cfg, **overrides)
        calib = calibration_rows(train, cfg, inputs.base.seed)
        with tempfile.TemporaryDirectory() as tmp:
            int8 = Path(tmp) / "int8.onnx"
            t = time.monotonic()
            quantize(fp32, int8, cfg, eval_batches(calib, species, size, batch_size=1))
            q_s = time.monotonic() - t
            result, probs, _ = compare(
                fp32, int8, batches, y, sorted(set(y.tolist())),
                threads=0, unknown_threshold=meta.unknown_threshold,
            )  # fmt: skip
            row = {
                "top1_agreement": result["top1_agreement"],
                "accuracy_delta": result["accuracy_delta"],
                "fp32_accuracy": result["fp32"]["accuracy"],
                "unknown_flag_agreement": result["unknown_flag_agreement"],
                # finer than flips: KL(FP32 || INT8) of the class probabilities, mean per photo
                "kl": float(np.mean(np.sum(reference * np.log(reference / probs), axis=1))),
                "quantize_s": q_s,
            } | _flips(reference, probs, y, margin)
            if latency:  # every core, then one thread (as a phone app or a busy server)
                row |= batch1_ratio(fp32, int8, size, threads=0)
                row |= {f"{k}_t1": v for k, v in batch1_ratio(fp32, int8, size, 1).items()}
        out[name] = row
        print(f"  {name}: {json.dumps(row)}", flush=True)
    return out


def _flips(
    reference: np.ndarray, probs: np.ndarray, y: np.ndarray, margin: np.ndarray
) -> dict[str, Any]:
    """The photos whose top-1 INT8 changed: how many FP32 had right and INT8 wrong (lost) or the
    reverse (gained), and FP32's top-1 − top-2 margin on each: a flip of a near tie is one any
    perturbation of the floats can cause, another CPU kind's included."""
    fp32_top, int8_top = reference.argmax(1), probs.argmax(1)
    flipped = np.flatnonzero(fp32_top != int8_top)
    return {
        "lost": int(((fp32_top == y) & (int8_top != y)).sum()),
        "gained": int(((fp32_top != y) & (int8_top == y)).sum()),
        "flip_margins": sorted(round(float(margin[i]), 4) for i in flipped),
    }


def batch1_ratio(
    fp32: Path, int8: Path, size: int, threads: int, rounds: int = 15, calls: int = 5
) -> dict:
    """INT8 / FP32 median batch-1 latency on `threads` (0: every core), the two sessions
    measured round-robin."""
    sessions = {name: ort_session(path, threads, spin=False)
                for name, path in (("fp32", fp32), ("int8", int8))}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            times[name].append(latency_ms(session, size, 1, calls))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"fp32_batch1_ms": med["fp32"], "int8_batch1_ms": med["int8"],
            "ratio_batch1": med["int8"] / med["fp32"]}  # fmt: skip


def summary(per_seed: dict[str, dict[str, Any]], recipes: list[str]) -> dict[str, Any]:
    out = {}
    for name in recipes:
        out[name] = {}
        for key in ("top1_agreement", "accuracy_delta", "kl", "ratio_batch1", "ratio_batch1_t1"):
            values = [s[name][key] for s in per_seed.values() if key in s.get(name, {})]
            if values:
                out[name][key] = {
                    "mean": statistics.mean(values),
                    "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values),
                    "per_seed": values,
                }
    return out


def markdown(result: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in result["seeds"])
    lines = [
        f"`python bench/int8.py` on {result['data']}, seeds {seeds}; test photos per seed: "
        + ", ".join(str(result["per_seed"][str(s)]["n_test"]) for s in result["seeds"]),
        "",
        "| recipe | top-1 agreement mean ± sd (min) | accuracy delta mean ± sd | "
        "KL(FP32‖INT8) mean | INT8/FP32 batch-1 | same, 1 thread |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        a, d = s["top1_agreement"], s["accuracy_delta"]
        ratios = [
            f"{s[k]['mean']:.2f}" if k in s else "-" for k in ("ratio_batch1", "ratio_batch1_t1")
        ]
        lines.append(
            f"| {name} | {a['mean']:.4f} ± {a['sd']:.4f} ({a['min']:.4f}) | "
            f"{d['mean']:+.4f} ± {d['sd']:.4f} | {s['kl']['mean']:.4f} | {' | '.join(ratios)} |"
        )
    lines += [
        "",
        f"Photos whose top-1 changed, per seed: count (FP32 right → INT8 wrong / the reverse) and "
        f"FP32's top-1 − top-2 probability on each; near ties (margin < {NEAR_TIE}) among the "
        "seed's test photos: "
        + ", ".join(f"{result['per_seed'][str(s)]['near_ties']}" for s in result["seeds"]),
        "",
        "| recipe | " + " | ".join(f"seed {s}" for s in result["seeds"]) + " |",
        "|---|" + "---|" * len(result["seeds"]),
    ]
    for name in result["summary"]:
        cells = []
        for s in result["seeds"]:
            row = result["per_seed"][str(s)][name]
            margins = ", ".join(f"{m:.3f}" for m in row["flip_margins"])
            n = len(row["flip_margins"])
            cells.append(f"{n} (−{row['lost']}/+{row['gained']}): {margins}" if n else "0")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="photo set with species.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "snakeid-int8")
    ap.add_argument("--only", nargs="+", choices=sorted(RECIPES), help="these recipes only")
    ap.add_argument("--latency", action="store_true", help="also time batch-1 INT8 vs FP32")
    args = ap.parse_args()
    data, out = args.data.resolve(), args.out.resolve()  # `measure` works in each project
    recipes = {k: v for k, v in RECIPES.items() if not args.only or k in args.only}
    per_seed = {}
    for seed in args.seeds:
        root = pipeline(data, args.workdir.resolve(), seed)
        print(f"seed {seed}:", flush=True)
        per_seed[str(seed)] = measure(root, recipes, args.latency)
    result = {
        "data": data.name,
        "seeds": args.seeds,
        "per_seed": per_seed,
        "summary": summary(per_seed, list(recipes)),
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
