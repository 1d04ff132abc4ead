"""The snakeid speed benchmark (issue 7): every number as a ratio measured side by side.

    python bench/speed.py --out bench/results.json          # full: default params
    python bench/speed.py --fast --out /tmp/bench.json      # CI smoke: tiny sizes

It builds its own copy of the project in a temp dir (a fresh git repo), runs the real pipeline
there with `dvc repro` and measures, in one run:

1. `train_head`: the original study's loop (`bench/study_loop.py`) vs ours (the real stage),
   same data/epochs/lr/seed: wall time and val macro-F1 of both, and BN drift of the study loop;
2. `finetune`: likewise;
3. inference per backbone: PyTorch eager vs ONNX Runtime FP32 vs INT8 (static QDQ, dynamic);
   batch-1 latency (median, p95), batch-32 throughput; thread and memory-format settings;
4. data loading: images/s from the raw photos vs `verify`'s resized copies; DataLoader workers;
5. no-op `dvc repro` wall time, and peak RSS of the training stages (also at batch 32, 320 px).

It writes `--out` (JSON: raw numbers, ratios, targets, `met` per target) and a markdown table
next to it (`.md`). Absolute times on a shared machine are noise, so compared variants run
interleaved: inference variants round-robin, loading variants chunk by chunk, and the two
training loops, whose end-to-end runs take minutes one after the other, are judged on per-image
costs of their work measured interleaved (`_unit_costs.py`) times the real runs' counts.
Variants marked PROPOSED are library changes this benchmark recommends, not what the pipeline
does today; "alternative" variants are what the pipeline's settings were chosen over.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import _inference
import _loading
import _project
import _report
import _unit_costs
from snakeid.config import base_config, load_params, merge_params, section
from snakeid.data.dataset import (
    DataConfig,
    SplitDataset,
    eval_batches,
    eval_transform,
    train_transform,
)
from snakeid.data.manifest import read_manifest
from snakeid.data.split import model_species
from snakeid.deploy.quantize import QuantizeConfig
from snakeid.model.checkpoint import load_checkpoint
from snakeid.model.engine import feature_engine, prefix_engine
from snakeid.model.export import ExportConfig
from snakeid.model.models import ModelConfig, build_model
from snakeid.taxa import label_index, load_species
from snakeid.train.config import (
    FinetuneConfig,
    Setup,
    TrainHeadConfig,
    finetune_settings,
    start_process,
)
from snakeid.train.evaluate import evaluable
from snakeid.utils import setup_logging

_logger = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
STUDY_LOOP = Path(__file__).resolve().parent / "study_loop.py"

# What this benchmark compares with the study's loop: its two-stage AdamW training of one backbone
# (the pipeline's default is now a probe on three backbones; bench/latency.py times that model).
STUDY_RECIPE = {
    "base": {"backbone": "efficientnet_lite0", "image_size": 224},
    "train_head": {"method": "sgd", "refit": False},
    "finetune": {"enabled": True},
}
INFERENCE_BACKBONES = ("efficientnet_lite0", "mobilenet_v3_small", "efficientnet_b0")

# --fast: every code path, tiny sizes, no thresholds that matter.
FAST_PARAMS = {
    "base": {"image_size": 64},
    "download": {
        "demo": {
            "observations_rare": 3,
            "observations_common": 3,
            "max_photos_per_observation": 2,
            "image_size": 96,
        }
    },
    "data": {"views": 2, "batch_size": 16},
    "train_head": {"epochs": 1},
    "finetune": {"epochs": 1},
    "evaluate": {"bootstrap": 100},
    "quantize": {
        "calibration_images": 8,
        "latency_runs": 2,
        "min_agreement": 0.0,  # a 1-epoch model on 64 px photos is too uncertain to gate on
        "max_accuracy_drop": 1.0,
    },
}


class Sizes:
    """How much of everything to measure: the full run or the CI smoke run."""

    def __init__(self, fast: bool):
        self.fast = fast
        self.params = merge_params(STUDY_RECIPE, FAST_PARAMS if fast else {})
        self.noop_runs = 1 if fast else 3
        self.decode_images, self.decode_rounds = (20, 1) if fast else (120, 2)
        self.worker_images, self.worker_rounds = (16, 1) if fast else (64, 2)
        self.rounds_b1, self.rounds_b32 = (3, 1) if fast else (30, 3)
        self.cost_rounds = 1 if fast else 5  # interleaved per-image costs of the training loops
        # peak-RSS check at batch 32 (320 px full; tiny in fast mode), on a subset of the split
        self.rss_size, self.rss_train, self.rss_val = (96, 8, 4) if fast else (320, 48, 16)


def _path(root: Path, name: str) -> Path:
    """A path of the project copy, as dvc.yaml names it."""
    return root / _project.dvc_paths(root)[name]


# ---------------------------------------------------------------------------------------------
# 1, 2, 5: the pipeline, with the study's loop beside each training stage


def pipeline_and_training(root: Path, scratch: Path, sizes: Sizes) -> dict[str, Any]:
    stages: dict[str, dict[str, float]] = {}
    study: dict[str, Any] = {}
    paths = _project.dvc_paths(root)

    def repro(target: str | None, labels: list[str]) -> None:
        cmd = ["dvc", "repro", *([target] if target else [])]
        _logger.info("running %s", " ".join(cmd))
        log = scratch / f"repro_{target or 'all'}.log"
        w = _project.run_watched(cmd, root, log, {s: f"stages/{s}.py" for s in labels})
        stages.update(_project.check(w).labels)

    def study_loop(stage: str) -> None:
        out = scratch / f"study_{stage}.json"
        cmd = [sys.executable, str(STUDY_LOOP), "--stage", stage, "--split", paths["split"]]
        cmd += ["--out", str(out)] + (["--head", paths["head"]] if stage == "finetune" else [])
        _logger.info("running the study's loop (%s)", stage)
        w = _project.check(_project.run_watched(cmd, root, scratch / f"study_{stage}.log"))
        study[stage] = json.loads(out.read_text()) | {
            "process_wall_s": w.wall_s,
            "cpu_s": w.cpu_s,
            "peak_rss_mb": w.peak_rss_mb,
        }
        study[stage].pop("history")

    started = time.perf_counter()
    repro("split", ["download", "verify", "split"])
    repro("train_head", ["train_head"])  # ours, then the study's loop, alternating
    study_loop("train_head")
    repro("finetune", ["finetune"])
    study_loop("finetune")
    repro(None, ["evaluate", "export_onnx", "quantize"])
    first_repro_s = time.perf_counter() - started

    # the feature pass's time, from the stage's log (no timings in DVC outputs)
    logged = (scratch / "repro_train_head.log").read_text()
    features_s = sum(float(s) for s in re.findall(r"features: .* views in ([0-9.]+)s", logged))
    training = {}
    for stage in ("train_head", "finetune"):
        metrics = json.loads((root / f"reports/{stage}.json").read_text())
        logged = (scratch / f"repro_{stage}.log").read_text()
        epochs_s = float(re.search(rf"{stage}: best epoch .*, ([0-9.]+)s training", logged)[1])
        ours = {k: metrics[k] for k in ("val_macro_f1", "val_accuracy", "best_epoch", "epochs")}
        ours |= {k: metrics[k] for k in ("views", "n_train", "n_val")}
        ours |= {
            "loop": "ours (snakeid.train: frozen features cached once by train_head)",
            "features_s": features_s if stage == "train_head" else 0.0,
            "epochs_s": epochs_s,
            "process_wall_s": stages[stage]["wall_s"],
            "cpu_s": stages[stage]["cpu_s"],
            "peak_rss_mb": stages[stage]["peak_rss_mb"],
        }
        training[stage] = {"ours": ours, "study": study[stage]}
    return {
        "training": training,
        "stages": stages,
        "first_repro_s": first_repro_s,
        "noop_repro": _project.noop_repro(root, scratch, sizes.noop_runs),
        "quantize_stage_metrics": json.loads((root / "reports/quantize.json").read_text()),
    }


def interleaved_costs(root: Path, scratch: Path, sizes: Sizes, training: dict[str, Any]) -> None:
    """Per-image costs of both loops' work, measured interleaved (see _unit_costs)."""
    params = load_params(root / "params.yaml")
    setup = Setup.from_params(params)
    start_process(setup.base)  # the stages' seeding, determinism and thread settings
    base, data = setup.base, setup.data
    head_cfg = section(params, "train_head", TrainHeadConfig)
    ft_cfg = section(params, "finetune", FinetuneConfig)
    augment = train_transform(
        base.image_size, augment=data.augment, random_erasing=data.random_erasing
    )
    train_ds = SplitDataset.from_csv(_path(root, "split") / "train.csv", setup.species, augment)
    val_ds = SplitDataset.from_csv(
        _path(root, "split") / "val.csv", setup.species, eval_transform(base.image_size)
    )
    model_cfg = section(params, "model", ModelConfig)
    pretrained = build_model(base.backbone, len(setup.species), model_cfg)
    head, _ = load_checkpoint(_path(root, "head"), setup.species)
    _logger.info("interleaved per-image costs of both training loops")
    costs = _unit_costs.measure(
        pretrained,
        head,
        ft_cfg.unfreeze_blocks,
        train_ds,
        val_ds,
        batch_size=data.batch_size,
        head_lr=head_cfg.lr,
        finetune_lr=finetune_settings(head_cfg, ft_cfg, base.seed)["lr"],
        rounds=sizes.cost_rounds,
        image_size=base.image_size,
        scratch=scratch,
    )
    counts = {
        stage: {k: training[stage]["ours"][k] for k in ("epochs", "views", "n_train", "n_val")}
        for stage in ("train_head", "finetune")
    }
    summary = _unit_costs.summary(costs, counts)
    for stage in ("train_head", "finetune"):
        training[stage]["interleaved"] = summary[stage] | {"seconds_per_image": costs}
    # start_process() turned it on; serving does not use it
    torch.use_deterministic_algorithms(False)


def compare(t: dict[str, Any], target: float) -> dict[str, Any]:
    """Ratios of one stage; `met` is judged on the interleaved ratio (robust to load changes)."""
    ours, study = t["ours"], t["study"]
    ratios = {
        "speedup_interleaved": t["interleaved"]["speedup"],
        # end to end (ours first, then the study's loop): biased by load changes in between
        "speedup_process_wall": study["process_wall_s"] / ours["process_wall_s"],
        "speedup_cpu": study["cpu_s"] / ours["cpu_s"],
    }
    f1_delta = ours["val_macro_f1"] - study["val_macro_f1"]
    return t | {
        "ratios": ratios,
        "val_macro_f1_delta": f1_delta,
        "target": f"≥ {target:g}× faster than the study's loop at equal or better val macro-F1",
        "met": bool(ratios["speedup_interleaved"] >= target and f1_delta >= 0),
    }


def projections(results: dict[str, Any]) -> dict[str, Any]:
    """train_head speedups of possible library changes, from the interleaved costs."""
    head = results["train_head"]["interleaved"]
    costs, counts = head["seconds_per_image"], head["counts"]
    return {
        "train_head": {
            "as_is": _unit_costs.head_times(costs, **counts)["speedup"],
            "views_1": _unit_costs.head_times(costs, **(counts | {"views": 1}))["speedup"],
            "torch_prefix": _unit_costs.head_times(
                costs, **counts, extractor="ours_features_torch"
            )["speedup"],
        },
        "onnx_prefix_vs_eager_prefix_per_image": costs["ours_features_torch"]
        / costs["ours_features"],
    }


# ---------------------------------------------------------------------------------------------
# 5b: peak RSS of the training stages at batch 32, 320 px


def memory_check(root: Path, scratch: Path, sizes: Sizes) -> dict[str, Any]:
    """Run both training stages (their dvc.yaml commands) at batch 32, `rss_size` px, on a
    subset of the split.

    Peak RSS is the process (torch, model, activations: independent of the split size) plus the
    memory-mapped feature cache (∝ views × photos), so the subset's peak is extrapolated to the
    full split by the cache's size difference, from the cached tensor's shape."""
    params = load_params(root / "params.yaml")
    overrides = {
        "base": {"image_size": sizes.rss_size},
        "data": {"batch_size": 32},
        "train_head": {"epochs": 1},
        "finetune": {"epochs": 1},
    }
    p = scratch / "params_rss.yaml"
    p.write_text(yaml.safe_dump(merge_params(params, overrides), sort_keys=False))
    split = scratch / "split_rss"
    split.mkdir(exist_ok=True)
    full = {s: read_manifest(_path(root, "split") / f"{s}.csv") for s in ("train", "val", "test")}
    keep = {"train": sizes.rss_train, "val": sizes.rss_val, "test": sizes.rss_val}
    for s, rows in full.items():
        step = max(1, len(rows) // keep[s])
        with open(split / f"{s}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows[::step][: keep[s]])
    paths = {
        "split": str(split),
        "features": str(scratch / "features_rss"),
        "head": str(scratch / "rss_head.pt"),
        "final": str(scratch / "rss_final.pt"),
    }
    out = {}
    for stage in ("train_head", "finetune"):
        cmd = _project.stage_command(root, stage, paths, scratch, p)
        _logger.info("memory check: %s at %d px, batch 32", stage, sizes.rss_size)
        w = _project.check(_project.run_watched(cmd, root, scratch / f"rss_{stage}.log"))
        out[stage] = {"measured_peak_rss_mb": w.peak_rss_mb, "wall_s": w.wall_s}

    cached = np.load(scratch / "features_rss/train.npy", mmap_mode="r")  # (views, n, ...)
    views = cached.shape[0]
    per_image = int(np.prod(cached.shape[2:])) * cached.dtype.itemsize
    n_full = (len(full["train"]), len(full["val"]))
    n_sub = (cached.shape[1], min(sizes.rss_val, n_full[1]))
    extra = per_image * ((views * n_full[0] + n_full[1]) - (views * n_sub[0] + n_sub[1]))
    for v in out.values():
        v["projected_full_split_peak_rss_mb"] = v["measured_peak_rss_mb"] + extra / 2**20
    worst = max(v["projected_full_split_peak_rss_mb"] for v in out.values())
    return {
        "image_size": sizes.rss_size,
        "batch_size": 32,
        "views": views,
        "cache_bytes_per_image_view": per_image,
        "subset": {"train": n_sub[0], "val": n_sub[1]},
        "full_split": {"train": n_full[0], "val": n_full[1]},
        "stages": out,
        "worst_projected_mb": worst,
        "target": "training peak RSS ≤ 3 GB at batch 32, 320 px",
        "met": bool(worst <= 3 * 1024) if sizes.rss_size >= 320 else None,
    }


# ---------------------------------------------------------------------------------------------
# 3: inference


def inference(root: Path, scratch: Path, sizes: Sizes) -> dict[str, Any]:
    params = load_params(root / "params.yaml")
    base = base_config(params)
    species, _ = model_species(params, load_species(root / base.species_file))  # its classes
    quant = section(params, "quantize", QuantizeConfig)
    opset = section(params, "export_onnx", ExportConfig).opset
    trained, ckpt = load_checkpoint(_path(root, "final"), species)
    size = ckpt.image_size
    train = read_manifest(_path(root, "split") / "train.csv")
    test, _ = evaluable(read_manifest(_path(root, "split") / "test.csv"), train)
    index = label_index(species)
    y = np.array([index[r["taxon"]] for r in test])
    calib_rows = random.Random(base.seed).sample(train, min(quant.calibration_images, len(train)))
    calib = eval_batches(calib_rows, species, size, batch_size=1)  # as the quantize stage does
    batches = eval_batches(test, species, size)
    out: dict[str, Any] = {"image_size": size, "backbones": {}}
    for name in INFERENCE_BACKBONES:
        if [name] == ckpt.backbone:
            model, note = trained, "trained by the pipeline (model_final.pt)"
        else:
            torch.manual_seed(0)
            model = build_model(name, len(species), ModelConfig(pretrained=False))
            note = (
                "random weights (pretrained: false; ImageNet weights need a download): "
                "latency is representative, accuracy/agreement are not"
            )
        _logger.info("inference: %s", name)
        r = _inference.bench_backbone(
            name,
            model,
            image_size=size,
            opset=opset,
            quant=quant,
            calibration=calib,
            test_batches=batches,
            test_labels=y,
            scratch=scratch,
            rounds1=sizes.rounds_b1,
            rounds32=sizes.rounds_b32,
        )
        out["backbones"][name] = r | {"weights": note, "trained": [name] == ckpt.backbone}
    out["targets"] = _inference_targets(out["backbones"])
    return out


def _inference_targets(backbones: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, r in backbones.items():
        q, ratios = r["quality"], r["ratios"]
        s8 = q["onnx int8 static"]
        drop = q["onnx fp32"]["accuracy"] - s8["accuracy"] if r["trained"] else None
        alt = q[_inference.ALT]
        tag = "" if r["trained"] else " (random weights)"
        if r["static_calibration_error"]:
            tag += f" [{r['static_calibration_error'].split(':')[0]} calibration failed; minmax]"
        act = f"{r['static_activations']} activations"
        rows += [
            _target(
                f"{name}: INT8 static ({act}) b1 latency ≤ 0.6× ONNX FP32",
                ratios["int8_static_vs_onnx_fp32_b1"],
                ratios["int8_static_vs_onnx_fp32_b1"] <= 0.6,
                "×",
            ),
            _target(
                f"{name}: INT8 static top-1 agreement ≥ 98 %{tag}",
                s8["top1_agreement_vs_onnx_fp32"],
                s8["top1_agreement_vs_onnx_fp32"] >= 0.98 and not r["static_calibration_error"]
                if r["trained"]
                else None,
                "%",
            ),
            _target(
                f"{name}: INT8 static accuracy loss ≤ 1 point",
                drop,
                (drop <= 0.01) if drop is not None else None,
                "pt",
            ),
            _target(
                f"{name}: (alternative, not shipped) INT8 static with {r['other_activations']} "
                "activations, b1 latency vs ONNX FP32",
                ratios["int8_static_other_activations_vs_onnx_fp32_b1"],
                None,
                "×",
            ),
            _target(
                f"{name}: (alternative, not shipped) its top-1 agreement{tag}",
                alt["top1_agreement_vs_onnx_fp32"],
                None,
                "%",
            ),
            _target(
                f"{name}: ONNX FP32 b1 latency ≤ 0.7× PyTorch eager (best setting)",
                ratios["onnx_fp32_vs_eager_b1"],
                ratios["onnx_fp32_vs_eager_b1"] <= 0.7,
                "×",
            ),
        ]
    return rows


def _target(name: str, measured: float | None, met: bool | None, unit: str) -> dict[str, Any]:
    return {"target": name, "measured": measured, "unit": unit, "met": met}


# ---------------------------------------------------------------------------------------------
# 4: data loading


def loading(root: Path, scratch: Path, sizes: Sizes) -> dict[str, Any]:
    params = load_params(root / "params.yaml")
    base = base_config(params)
    species = load_species(root / base.species_file)
    data = section(params, "data", DataConfig)
    augment = train_transform(
        base.image_size, augment=data.augment, random_erasing=data.random_erasing
    )
    decode = _loading.decoding(
        root, _path(root, "clean"), augment, sizes.decode_images, sizes.decode_rounds
    )
    ds = SplitDataset.from_csv(_path(root, "split") / "train.csv", species, augment)
    batch = data.batch_size
    model = build_model(base.backbone, len(species), ModelConfig())
    unfreeze = section(params, "finetune", FinetuneConfig).unfreeze_blocks
    engine = feature_engine(data.feature_engine, "cpu")
    prefix = model.features[: model.cut(unfreeze)]
    with prefix_engine(prefix, engine, "cpu", base.image_size) as run:
        workers = _loading.loader_workers(
            run,
            ds,
            scratch,
            n=sizes.worker_images,
            batch_size=batch,
            workers=(0, 1, 2),
            rounds=sizes.worker_rounds,
        )
    return {"decoding": decode, "feature_extraction_workers": workers | {"engine": engine}}


# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import dvc
    import onnx
    import onnxruntime

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "dvc": dvc.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_start": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench/results.json")
    ap.add_argument("--fast", action="store_true", help="CI smoke mode: tiny sizes, < 3 min")
    ap.add_argument("--workdir", type=Path, help="where to build the project copy (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the project copy afterwards")
    args = ap.parse_args()
    setup_logging()
    out_path = args.out.resolve()
    sizes = Sizes(args.fast)
    results: dict[str, Any] = {
        "mode": "fast" if args.fast else "full",
        "machine": machine(),
        "command": " ".join(["python", "bench/speed.py", *sys.argv[1:]]),
    }
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="snakeid-bench-", dir=args.workdir))
    try:
        root = _project.make_project(REPO, work / "project", sizes.params)
        scratch = work / "scratch"
        scratch.mkdir()
        params = load_params(root / "params.yaml")
        results["params"] = {
            k: params.get(k) for k in ("base", "data", "train_head", "finetune", "quantize")
        }
        sections: dict[str, Any] = {}
        results["sections"] = sections

        def timed(name: str, fn: Callable[..., Any], *a: Any) -> Any:
            """Run one section; keep its wall time and the load other processes put on us."""
            t, load = time.perf_counter(), os.getloadavg()[0]
            out = fn(*a)
            sections[name] = {"s": time.perf_counter() - t, "load_average_1min_at_start": load}
            return out

        pipe = timed("pipeline_and_training", pipeline_and_training, root, scratch, sizes)
        os.chdir(root)  # manifests hold paths relative to the project root
        timed("interleaved_costs", interleaved_costs, root, scratch, sizes, pipe["training"])
        results["train_head"] = compare(pipe["training"]["train_head"], 5.0)
        results["finetune"] = compare(pipe["training"]["finetune"], 3.0)
        results["inference"] = timed("inference", inference, root, scratch, sizes)
        results["loading"] = timed("loading", loading, root, scratch, sizes)
        results["pipeline"] = {
            "stages": pipe["stages"],
            "first_repro_s": pipe["first_repro_s"],
            "noop_repro": pipe["noop_repro"] | {"target": "≤ 3 s"},
            "quantize_stage_metrics": pipe["quantize_stage_metrics"],
            "memory": timed("memory", memory_check, root, scratch, sizes),
        }
        noop = results["pipeline"]["noop_repro"]
        noop["met"] = bool(noop["median_s"] <= 3.0 and not noop["stages_rerun"])
    finally:
        os.chdir(REPO)
        if args.keep:
            _logger.info("project kept in %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - started
    results["projections"] = projections(results)
    results["settings"] = _report.chosen_settings(results)
    results["targets"] = _report.targets(results)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, sort_keys=True, default=_jsonable) + "\n")
    md = out_path.with_suffix(".md")
    md.write_text(_report.markdown(results))
    _logger.info("wrote %s and %s in %.0fs", out_path, md, results["total_s"])
    print(md.read_text())


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    main()
