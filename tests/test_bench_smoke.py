"""Smoke test of the speed benchmark: `bench/speed.py --fast` runs every measurement at tiny
sizes and writes every section. No speed thresholds: CI machines are shared and small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtualenv running the tests has dvc and python


@pytest.mark.slow
def test_fast_benchmark_writes_every_section(tmp_path):
    out = tmp_path / "results.json"
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    p = subprocess.run(
        [sys.executable, "bench/speed.py", "--fast", "--out", str(out), "--workdir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "fast"
    assert {"cpu", "cores", "torch", "onnxruntime", "date"} <= set(r["machine"])
    for stage in ("train_head", "finetune"):
        t = r[stage]
        assert t["ours"]["val_macro_f1"] >= 0 and t["study"]["val_macro_f1"] >= 0
        assert t["ratios"]["speedup_interleaved"] > 0 and t["interleaved"]["ours_s"] > 0
        assert isinstance(t["study"]["frozen_bn_buffers_changed"], bool)
        assert isinstance(t["met"], bool)
    backbones = r["inference"]["backbones"]
    assert set(backbones) == {"efficientnet_lite0", "mobilenet_v3_small", "efficientnet_b0"}
    for b in backbones.values():
        for v in b["timing"].values():
            assert v["b1_median_ms"] > 0 and v["b1_p95_ms"] >= v["b1_median_ms"]
            assert v["b32_images_per_s"] > 0
        assert {"onnx fp32", "onnx int8 static", "onnx int8 dynamic"} <= set(b["quality"])
    assert set(r["loading"]["feature_extraction_workers"]["images_per_s"]) == {"0", "1", "2"}
    assert r["loading"]["decoding"]["clean_vs_raw_speedup"] > 0
    pipe = r["pipeline"]
    assert {"train_head", "finetune"} <= set(pipe["stages"])
    assert pipe["noop_repro"]["stages_rerun"] == []
    assert all(s["measured_peak_rss_mb"] > 0 for s in pipe["memory"]["stages"].values())
    assert r["targets"] and all({"target", "measured", "met"} <= set(t) for t in r["targets"])
    assert out.with_suffix(".md").read_text().startswith("# snakeid benchmark")
    assert not list(tmp_path.glob("snakeid-bench-*"))  # the project copy is cleaned up
