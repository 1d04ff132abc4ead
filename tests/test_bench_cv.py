"""Smoke test of the cross-validation protocol: `bench/cv.py --fast` runs the pipeline's feature
pass and recipes over grouped folds of tiny demo data and writes the JSON and markdown. Shapes
and protocol only, no quality thresholds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fast_cross_validation_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "cv.json"
    only = [
        "lite0/probe",
        "lite0+lite1+lite2/probe_views",
        "lite0/sgd_head",
        "lite0/previous_default",
        "lite0+lite1+lite2/probe_views_adapt_lite0",
    ]
    p = subprocess.run(
        [sys.executable, "bench/cv.py", "--fast", "--out", str(out),
         "--work", str(tmp_path / "work"), "--only", *only],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    result = json.loads(out.read_text())
    assert result["meta"]["folds"] == 3
    assert set(result["recipes"]) == set(only)
    for name, rec in result["recipes"].items():
        assert len(rec["folds"]) == 3, name
        for fold in rec["folds"]:
            assert 0.0 <= fold["macro_f1"] <= 1.0 and fold["seconds"] > 0, name
            assert 0.0 <= fold["venomous_as_harmless"] <= 1.0, name
        assert set(rec["mean"]) == set(rec["sd"]) == set(rec["folds"][0])
    # the adapted recipe: Lite0 trained per fold (on the photos outside its calibration fold)
    adapt = result["meta"]["adapt"]["lite0+lite1+lite2/probe_views_adapt_lite0"]
    assert adapt["backbones"] == ["efficientnet_lite0"] and adapt["epochs"] == 1
    assert len(list((tmp_path / "work/fast/adapted").glob("*-efficientnet_lite0.npy"))) == 3
    md = out.with_suffix(".md").read_text()
    assert "| backbone | recipe | macro-F1 |" in md and md.count("\n| lite0 | probe |") == 1
    assert "only that fold's out-of-fold logits fit" in md
    assert "| recipe | miss target 0 | k = 19 (P ≥ 0.050) |" in md  # the Bayes rule beside it
    # nothing of the photos themselves leaves the work dir
    assert not any(k in json.dumps(result) for k in ("photo_id", "obs:", "photo:"))

    # runs accumulate into one JSON only while the settings the numbers depend on agree
    p = subprocess.run(
        [sys.executable, "bench/cv.py", "--fast", "--out", str(out), "--seed", "7",
         "--work", str(tmp_path / "work"), "--only", "lite0/probe"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode != 0 and "seed 42 -> 7" in p.stderr, p.stderr[-3000:]
    assert json.loads(out.read_text()) == result
