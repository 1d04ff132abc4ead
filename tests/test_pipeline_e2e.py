"""End to end: the real `dvc repro` of all eight stages on shrunk params in a temp git repo."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dvc_project import (
    BIN,
    GIT,
    REPO,
    copy_project,
    params_read_file,
    ran_stages,
    reproduced,
    run,
)
from snakeid.train.evaluate import HEADLINE, OPENSET_HEADLINE, VERDICT_HEADLINE

STAGES = {
    "download",
    "verify",
    "split",
    "train_head",
    "finetune",
    "evaluate",
    "export_onnx",
    "quantize",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A private copy of the shrunk project after its first full `dvc repro`."""
    return copy_project(reproduced(tmp_path_factory), tmp_path_factory.mktemp("e2e") / "snakeid")


@pytest.mark.slow
def test_all_eight_stages_ran(project):
    assert ran_stages((project / "first_repro.log").read_text()) == STAGES
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


def _numbers(tree: object) -> list[float]:
    if isinstance(tree, dict):
        return [n for v in tree.values() for n in _numbers(v)]
    if isinstance(tree, list):
        return [n for v in tree for n in _numbers(v)]
    return [tree] if isinstance(tree, int | float) and not isinstance(tree, bool) else []


@pytest.mark.slow
def test_metrics_are_a_small_set_of_headline_numbers(project):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    data = {path: m["data"] for path, m in next(iter(shown.values()))["data"].items()}
    assert set(data["metrics/evaluate.json"]) >= set(HEADLINE)
    openset = data["metrics/evaluate.json"]["openset"]  # the held-out demo species, measured
    assert set(openset) == set(OPENSET_HEADLINE) and 0 <= openset["auroc"] <= 1, openset
    assert data["metrics/split.json"]["photos"]["unknown"] > 0
    for name in ("verify", "split", "export_onnx", "quantize"):
        assert data[f"metrics/{name}.json"], name
    for stage in ("train_head", "finetune"):  # DVCLive's summary
        assert 0 <= data[f"dvclive/{stage}/metrics.json"][stage]["val_macro_f1"] <= 1, stage
    # what a person is told: the share of each kind of photo told "harmless" (no warning)
    assert set(data["metrics/evaluate.json"]["verdicts"]) == set(VERDICT_HEADLINE)
    assert len(_numbers(data)) <= 45, json.dumps(data, indent=1)
    assert "per_species" not in json.dumps(data)


@pytest.mark.slow
def test_plots_show_writes_html(project, tmp_path):
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project)
    html = (tmp_path / "plots" / "index.html").read_text()
    for plot in ("confusion", "per_species_f1", "val_macro_f1", "loss", "venomous_tradeoff"):
        assert plot in html, plot
    per_species = (project / "plots/per_species.csv").read_text().splitlines()
    assert per_species[0].startswith("species,") and len(per_species) > 2


@pytest.mark.slow
def test_each_stage_reads_only_the_params_it_declares(tmp_path_factory):
    """Every params key a stage read in the first repro is declared in its dvc.yaml entry."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = {name: stage.get("params", []) for name, stage in stages.items()}
    read: dict[str, set[str]] = {}
    for line in params_read_file(reproduced(tmp_path_factory)).read_text().splitlines():
        script, key = line.split("\t")
        read.setdefault(Path(script).stem, set()).add(key)
    assert set(read) == STAGES  # every stage script ran and read params
    undeclared = {
        stage: sorted(k for k in keys if not any(k == d or k.startswith(f"{d}.")
                                                  for d in declared[stage]))
        for stage, keys in read.items()
    }  # fmt: skip
    assert undeclared == dict.fromkeys(read, []), undeclared


@pytest.mark.slow
def test_onnx_models_agree_with_pytorch_on_test_photos(project):
    import onnxruntime as ort
    import torch

    from snakeid.data.dataset import eval_transform, load_rgb
    from snakeid.data.manifest import read_manifest
    from snakeid.model.checkpoint import load_checkpoint
    from snakeid.model.deployed import deployed
    from snakeid.model.openset import UnknownScore

    net, ckpt = load_checkpoint(project / "models/model_final.pt")
    score = UnknownScore.from_checkpoint(ckpt)  # the val-fitted T and unknown score, as exported
    model = deployed(
        net, temperature=ckpt.temperature, tta_flip=ckpt.tta_flip, openset=score.module()
    )
    meta = json.loads((project / "models/model_meta.json").read_text())
    assert meta["decision"]["unknown_threshold"] == score.threshold
    rows = read_manifest(project / "data/split/test.csv")
    rows += read_manifest(project / "data/split/unknown.csv")  # held-out species too
    tf = eval_transform(meta["image_size"])
    x = torch.stack([tf(load_rgb(project / r["path"])) for r in rows])
    with torch.inference_mode():
        ref, ref_u = (t.numpy() for t in model(x))
    fp32 = ort.InferenceSession(str(project / "models/model_fp32.onnx"))
    got, got_u = fp32.run(["logits", "unknown_score"], {"input": x.numpy()})
    assert np.abs(got - ref).max() < 1e-3 and np.abs(got_u - ref_u).max() < 1e-3
    assert (got.argmax(1) == ref.argmax(1)).all()
    # the flag: equal but for scores within float32 rounding of the threshold
    near = np.abs(ref_u - score.threshold) < 1e-3
    assert ((got_u > score.threshold) == (ref_u > score.threshold))[~near].all()
    int8 = ort.InferenceSession(str(project / "models/model_int8.onnx"))
    q, q_u = int8.run(["logits", "unknown_score"], {"input": x.numpy()})
    assert q.shape == ref.shape and np.isfinite(q).all() and np.isfinite(q_u).all()
    quant = json.loads((project / "metrics/quantize.json").read_text())  # headline
    # both agreements: on the test photos and on the held-out species' photos alike
    agree = q.argmax(1) == got.argmax(1)
    assert quant["top1_agreement"] == pytest.approx(agree.mean())
    flag_agree = (q_u > score.threshold) == (got_u > score.threshold)
    assert quant["unknown_flag_agreement"] == pytest.approx(flag_agree.mean())


@pytest.mark.slow
def test_changing_split_params_reruns_from_split(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["split"] = {"train": 0.6, "val": 0.2, "test": 0.2}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro", "split"], project).stdout
    assert ran_stages(out) == {"split"}, out
    run(["git", "checkout", "--", "."], project)  # params.yaml and the git-tracked outputs
    run(["dvc", "checkout"], project)


@pytest.mark.slow
def test_exp_run_reruns_from_the_changed_stage(project):
    out = run(["dvc", "exp", "run", "-S", "finetune.venomous_cost_ratio=19"], project).stdout
    assert ran_stages(out) == {"finetune", "evaluate", "export_onnx", "quantize"}, out
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    assert shown


@pytest.mark.slow
def test_adapting_a_backbone_ships_its_adapted_weights(project, tmp_path):
    """`dvc exp run -S adapt.backbones=[...]`: train_head fine-tunes that trunk before caching
    features; the final model carries its new weights, the other trunks their ImageNet ones.
    No calibration reads a photo that trunk trained on."""
    import torch

    from snakeid.data.manifest import read_manifest
    from snakeid.model.checkpoint import load_checkpoint
    from snakeid.model.models import ModelConfig, build_model

    again = copy_project(project, tmp_path / "again")
    out = run(["dvc", "exp", "run", "-S", "adapt.backbones=[efficientnet_lite0]",
               "-S", "adapt.epochs=1"], again).stdout  # fmt: skip
    assert ran_stages(out) == STAGES - {"download", "verify", "split"}, out
    diff = json.loads(run(["dvc", "params", "diff", "--json"], again).stdout)["params.yaml"]
    # the review loop sees the change (dvc renders a list param as its string)
    assert diff["adapt.backbones"] == {"old": "[]", "new": "['efficientnet_lite0']"}, diff
    history = json.loads((again / "reports/train_head.json").read_text())["adapt"]
    assert [r["epoch"] for r in history["efficientnet_lite0"]["history"]] == [1], history
    # the trunk adapted on the train photos alone; every calibration read only val photos
    n_train, n_val = (len(read_manifest(again / f"data/split/{s}.csv")) for s in ("train", "val"))
    assert history["efficientnet_lite0"]["photos"] == n_train
    calibrated = json.loads((again / "reports/finetune.json").read_text())
    assert calibrated["calibrated_on"] == "out-of-fold val"
    assert calibrated["unknown_score"]["held_photos"] == n_val
    meta = json.loads((again / "models/model_meta.json").read_text())
    assert {t["backbone"]: t["adapted"] for t in meta["trunks"]} == {
        "efficientnet_lite0": True, "efficientnet_lite1": False, "efficientnet_lite2": False,
    }  # fmt: skip
    assert (
        "end to end on the training photos first (`adapt`): efficientnet_lite0"
        in (again / "models/MODEL_CARD.md").read_text()
    )
    net, ckpt = load_checkpoint(again / "models/model_final.pt")
    assert list(ckpt.params["adapt"]["backbones"]) == ["efficientnet_lite0"]
    imagenet = build_model(ckpt.backbone, len(ckpt.species), ModelConfig(), sizes=ckpt.trunk_sizes)
    for trunk, original in zip(net.trunks, imagenet.trunks, strict=True):
        same = all(torch.equal(v, original.state_dict()[k]) for k, v in trunk.state_dict().items())
        assert same == (trunk.name != "efficientnet_lite0"), trunk.name


@pytest.mark.slow
def test_independent_script_reproduces_int8_predictions(project):
    """Only onnxruntime, numpy, Pillow and model_meta.json: same predictions as `quantize`."""
    out = run([sys.executable, str(REPO / "bench/reproduce_int8.py")], project).stdout
    n = len((project / "plots/predictions_int8.csv").read_text().splitlines()) - 1
    assert f"{n}/{n} test photos" in out, out


@pytest.mark.slow
def test_snakeid_predict_matches_the_reported_int8_predictions(project):
    """`snakeid predict` on the test photos prints what `quantize` reported for them: the same
    top-1, "possibly venomous" rule and unknown-species flag."""
    with open(project / "plots/predictions_int8.csv", newline="") as f:
        reported = {r["path"]: r for r in csv.DictReader(f)}
    out = run(
        [str(BIN / "snakeid"), "predict", *reported, "--top-k", "1", "--format", "csv"], project
    ).stdout
    printed = {r["path"]: r for r in csv.DictReader(out.splitlines())}
    assert printed.keys() == reported.keys()
    for path, r in printed.items():
        assert r["species_1"] == reported[path]["predicted"], path
        assert _flag(r["possibly_venomous"]) == _flag(reported[path]["possibly_venomous"]), path
        assert _flag(r["unknown"]) == _flag(reported[path]["unknown"]), path
        for column in ("venomous_probability", "unknown_score"):  # the numbers behind the flags
            assert float(r[column]) == pytest.approx(float(reported[path][column]), abs=1e-5)
    assert len({r["predicted"] for r in reported.values()}) > 1  # not one answer for all


def _far_out_of_distribution(path: Path) -> Path:
    """A photo of no snake at all: a checkerboard of saturated colours."""
    from PIL import Image

    tiles = np.indices((8, 8)).sum(0) % 2  # (8, 8) of 0/1
    colours = np.array([[255, 0, 255], [0, 255, 0]], np.uint8)
    image = colours[np.kron(tiles, np.ones((40, 40), int))]
    Image.fromarray(image).save(path)
    return path


@pytest.mark.slow
def test_predict_and_serve_say_a_non_snake_is_not_a_known_species(project, tmp_path):
    import httpx2

    from tiny_model import running_server

    pattern = _far_out_of_distribution(tmp_path / "checkerboard.png")
    model = project / "models/model_int8.onnx"
    out = run(
        [str(BIN / "snakeid"), "predict", str(pattern), "--model", str(model), "--format", "csv"],
        project,
    ).stdout
    (row,) = csv.DictReader(out.splitlines())
    assert _flag(row["unknown"]) and _flag(row["possibly_venomous"]), row
    with running_server(model, tmp_path) as url:
        files = {"file": ("checkerboard.png", pattern.read_bytes(), "image/png")}
        body = httpx2.post(f"{url}/predict", files=files, timeout=30).json()
    n = len(json.loads((project / "models/model_meta.json").read_text())["species"])
    assert body["unknown"] is True and body["possibly_venomous"] is True
    assert body["message"] == f"Not one of the {n} species this model knows"
    assert len(body["predictions"]) == 3  # the closest species are still listed


def _flag(value: str) -> bool:
    return {"1": True, "0": False, "true": True, "false": False}[value.lower()]


@pytest.mark.slow
def test_a_fresh_clone_reproduces_the_committed_lock(project, tmp_path):
    """No DVC cache: the stages run again, and git sees no change (lock, metrics, plots,
    reports, DVCLive files), so `dvc repro` on a clone gives the committed results bit for bit."""
    clone = tmp_path / "clone"
    run([*GIT, "clone", "-q", str(project), str(clone)], tmp_path)
    out = run(["dvc", "repro"], clone).stdout
    # every stage with cached outputs runs; `evaluate` (git-tracked outputs only) is skipped
    # when its deps come out identical, which is the point
    assert STAGES - {"evaluate"} <= ran_stages(out), out
    assert run(["git", "status", "--porcelain"], clone).stdout == ""
    assert "up to date" in run(["dvc", "status"], clone).stdout


@pytest.mark.slow
def test_forcing_train_head_leaves_finetune_up_to_date(project, tmp_path):
    again = copy_project(project, tmp_path / "again")
    out = run(["dvc", "repro", "-f", "-s", "train_head"], again).stdout
    assert ran_stages(out) == {"train_head"}, out
    status = run(["dvc", "status"], again).stdout
    assert "up to date" in status, status


@pytest.mark.slow
def test_export_logs_no_warning(project, tmp_path):
    again = copy_project(project, tmp_path / "again")
    p = run(["dvc", "repro", "-f", "-s", "export_onnx"], again)
    assert ran_stages(p.stdout) == {"export_onnx"}
    assert "warning" not in (p.stdout + p.stderr).lower(), p.stdout + p.stderr


@pytest.mark.slow
def test_stages_run_their_checkouts_own_code(project, tmp_path):
    """A queued experiment runs in a copy of the repository: its stages must import that copy's
    src/, not the installed `snakeid` (an editable install of another checkout)."""
    again = copy_project(project, tmp_path / "again")
    stage_py = again / "src/snakeid/stage.py"
    stage_py.write_text(stage_py.read_text() + '\nprint("this checkout\'s snakeid")\n')
    out = run(["dvc", "repro", "-f", "-s", "split"], again).stdout
    assert "this checkout's snakeid" in out, out
