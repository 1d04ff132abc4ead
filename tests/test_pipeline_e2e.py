"""End to end: the real `dvc repro` of all eight stages on shrunk params in a temp git repo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dvc_project import BIN, REPO, copy_project, ran_stages, reproduced, run

EVALUATE_KEYS = {
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_precision",
    "macro_recall",
    "top3_accuracy",
    "venomous_to_harmless_rate",
    "harmless_to_venomous_rate",
    "ece",
    "n_test",
    "accuracy_ci95",
    "macro_f1_ci95",
    "per_species",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A private copy of the shrunk project after its first full `dvc repro`."""
    return copy_project(reproduced(tmp_path_factory), tmp_path_factory.mktemp("e2e") / "snakeid")


@pytest.mark.slow
def test_all_eight_stages_ran(project):
    assert ran_stages((project / "first_repro.log").read_text()) == {
        "download",
        "verify",
        "split",
        "train_head",
        "finetune",
        "evaluate",
        "export_onnx",
        "quantize",
    }
    for out in (
        "models/head.pt",
        "models/model_final.pt",
        "models/model_fp32.onnx",
        "models/model_int8.onnx",
        "models/model_meta.json",
        "plots/confusion_matrix.png",
    ):
        assert (project / out).is_file(), out


@pytest.mark.slow
def test_nothing_to_do_after_repro(project):
    status = run(["dvc", "status"], project).stdout
    assert "up to date" in status, status
    again = run(["dvc", "repro"], project).stdout
    assert ran_stages(again) == set(), again


@pytest.mark.slow
def test_metrics_show_has_the_review_keys(project):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    data = next(iter(shown.values()))["data"]
    ev = data["metrics/evaluate.json"]["data"]
    assert set(ev) >= EVALUATE_KEYS, EVALUATE_KEYS - set(ev)
    for name in ("verify", "split", "train_head", "finetune", "export_onnx", "quantize"):
        assert f"metrics/{name}.json" in data, name


@pytest.mark.slow
def test_plots_show_writes_html(project, tmp_path):
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "confusion" in html and "val_macro_f1" in html


@pytest.mark.slow
def test_onnx_models_agree_with_pytorch_on_test_photos(project):
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from snakeid.data import eval_transform, load_rgb
    from snakeid.manifest import read_manifest
    from snakeid.models import ModelConfig, deployed, load_checkpoint

    net, ckpt = load_checkpoint(project / "models/model_final.pt")
    model = deployed(net, ckpt, ModelConfig())  # with the val-fitted temperature, as exported
    meta = json.loads((project / "models/model_meta.json").read_text())
    rows = read_manifest(project / "data/split/test.csv")
    tf = eval_transform(meta["image_size"])
    x = torch.stack([tf(load_rgb(project / r["path"])) for r in rows])
    with torch.inference_mode():
        ref = model(x).numpy()
    fp32 = ort.InferenceSession(str(project / "models/model_fp32.onnx"))
    got = fp32.run(["logits"], {"input": x.numpy()})[0]
    assert np.abs(got - ref).max() < 1e-3
    assert (got.argmax(1) == ref.argmax(1)).all()
    int8 = ort.InferenceSession(str(project / "models/model_int8.onnx"))
    q = int8.run(["logits"], {"input": x.numpy()})[0]
    assert q.shape == ref.shape and np.isfinite(q).all()
    quant = json.loads((project / "metrics/quantize.json").read_text())
    assert quant["top1_agreement"] == pytest.approx((q.argmax(1) == got.argmax(1)).mean())


@pytest.mark.slow
def test_changing_split_params_reruns_from_split(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["split"] = {"train": 0.6, "val": 0.2, "test": 0.2}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro", "split"], project).stdout
    assert ran_stages(out) == {"split"}, out
    run(["git", "checkout", "params.yaml"], project)
    run(["dvc", "checkout"], project)


@pytest.mark.slow
def test_exp_run_reruns_from_the_changed_stage(project):
    out = run(["dvc", "exp", "run", "-S", "finetune.venomous_miss_target=0.05"], project).stdout
    assert ran_stages(out) == {"finetune", "evaluate", "export_onnx", "quantize"}, out
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    assert shown


@pytest.mark.slow
def test_independent_script_reproduces_int8_predictions(project):
    """Only onnxruntime, numpy, Pillow and model_meta.json: same predictions as `quantize`."""
    out = run([sys.executable, str(REPO / "bench/reproduce_int8.py")], project).stdout
    n = len((project / "plots/predictions_int8.csv").read_text().splitlines()) - 1
    assert f"{n}/{n} test photos" in out, out


@pytest.mark.slow
def test_snakeid_predict_matches_the_reported_int8_predictions(project):
    """`snakeid predict` on the test photos prints what `quantize` reported for them."""
    import csv

    with open(project / "plots/predictions_int8.csv", newline="") as f:
        reported = {r["path"]: r["predicted"] for r in csv.DictReader(f)}
    out = run(
        [str(BIN / "snakeid"), "predict", *reported, "--top-k", "1", "--format", "csv"], project
    ).stdout
    printed = {r["path"]: r["species"] for r in csv.DictReader(out.splitlines())}
    assert printed == reported


@pytest.mark.slow
def test_forced_rerun_gives_identical_metrics(project, tmp_path):
    """`dvc repro --force` again: same finetune and evaluate metrics, byte for byte."""
    again = copy_project(project, tmp_path / "again")
    before = {m: (again / f"metrics/{m}.json").read_bytes() for m in ("finetune", "evaluate")}
    run(["dvc", "repro", "--force"], again)
    for m, content in before.items():
        assert (again / f"metrics/{m}.json").read_bytes() == content, m
