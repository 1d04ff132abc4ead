"""Open-set scores (`snakeid.model.openset`) on tiny random data, and a smoke run of
`bench/openset.py --fast`. Properties and exact cross-checks only, no quality thresholds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from snakeid.model.openset import (
    Combined,
    MaxSoftmax,
    NearestNeighbour,
    UnknownScore,
    auroc,
    fit_threshold,
    size_mb,
)

REPO = Path(__file__).resolve().parents[2]


def _clusters(seed: int = 0, classes: int = 4, per_class: int = 30, dim: int = 16):
    """Well-separated Gaussian classes with positive coordinates (like pooled ReLU features)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(2, 6, (classes, dim)) * rng.integers(0, 2, (classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    x = centres[y] + rng.normal(0, 0.3, (len(y), dim))
    return x.astype(np.float32), y, centres


def _logits(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return -((x[:, None, :] - centres[None]) ** 2).sum(-1) / 4  # a nearest-centroid "probe"


FITS = {
    "msp": lambda x, y: MaxSoftmax(),
    "knn1": lambda x, y: NearestNeighbour.fit(x, k=1),
    "knn5": lambda x, y: NearestNeighbour.fit(x, k=5),
    "centroid": lambda x, y: NearestNeighbour.fit_centroids(x, y),
}


def far_points_score_higher(fit) -> None:
    """`fit(features, labels)`'s score ranks points far from every class above fresh photos of
    the known classes (shared with the research scores' tests)."""
    x, y, centres = _clusters()
    score = fit(x, y)
    xt, _, _ = _clusters(seed=1)  # fresh photos of the same classes
    xt = centres[np.arange(len(xt)) % len(centres)] + (xt - xt.mean(0)) * 0.1
    rng = np.random.default_rng(2)
    far = rng.uniform(0, 6, (40, x.shape[1])).astype(np.float32)  # no class's pattern
    known = score.score(xt, _logits(xt, centres))
    unknown = score.score(far, _logits(far, centres))
    assert known.shape == (len(xt),) and np.isfinite(known).all()
    assert known.max() < unknown.min()
    assert size_mb(score) >= 0


@pytest.mark.parametrize("name", sorted(FITS))
def test_far_away_points_score_higher_than_known_ones(name: str) -> None:
    far_points_score_higher(FITS[name])


def test_logit_scores_match_their_definitions() -> None:
    logits = np.array([[5.0, 0.0, 0.0], [1.0, 1.0, 1.0], [300.0, -300.0, 0.0]])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(MaxSoftmax().score(None, logits), 1 - p.max(1), atol=1e-12)


def test_nearest_neighbour_is_the_kth_cosine_distance() -> None:
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    q = np.array([[2.0, 0.0]])
    assert NearestNeighbour.fit(bank, k=1).score(q, None)[0] == pytest.approx(0.0, abs=1e-6)
    k2 = 1 - 1 / np.sqrt(2)  # second most similar: (1, 1)
    assert NearestNeighbour.fit(bank, k=2).score(q, None)[0] == pytest.approx(k2, abs=1e-6)
    assert NearestNeighbour.fit(bank).score(q, None, chunk=1).shape == (1,)


@pytest.mark.parametrize("per_class", [False, True])
def test_combined_standardises_its_parts(per_class: bool) -> None:
    x, y, centres = _clusters()
    parts = (MaxSoftmax(), NearestNeighbour.fit(x[::2]))
    val, val_logits = x[1::2], _logits(x[1::2], centres)
    values = np.stack([p.score(val, val_logits) for p in parts])  # (2, N)
    score = Combined.fit(parts, values, val_logits, per_class=per_class)
    assert score.offset.shape == (2, len(centres)) and score.scale.shape == (2,)
    top = val_logits.argmax(1)
    manual = sum((values[i] - score.offset[i, top]) / score.scale[i] for i in range(2))
    np.testing.assert_allclose(score.score(val, val_logits), manual)
    # on the photos it was fitted on, the sum is centred (per top-1 class, if asked)
    combined = score.combine(values, val_logits)
    groups = [top == c for c in range(len(centres))] if per_class else [top >= 0]
    assert all(abs(combined[g].mean()) < 1e-9 for g in groups)
    assert size_mb(score) == pytest.approx(size_mb(parts[1]) + (2 * len(centres) + 2) * 4e-6)
    far = np.random.default_rng(2).uniform(0, 6, (40, x.shape[1])).astype(np.float32)
    assert np.median(score.score(far, _logits(far, centres))) > combined.max()


@pytest.mark.parametrize("pass_rate", [0.5, 0.9, 0.95, 0.99, 1.0])
def test_threshold_passes_the_requested_share(pass_rate: float) -> None:
    s = np.random.default_rng(6).normal(size=101)
    t = fit_threshold(s, pass_rate)
    assert (s <= t).mean() >= pass_rate
    assert (s < t).mean() < pass_rate  # the smallest such threshold: one of the scores
    with pytest.raises(ValueError):
        fit_threshold(s, 0.0)


def test_auroc_matches_scikit_learn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    known, unknown = rng.integers(0, 5, 50).astype(float), rng.integers(2, 8, 30).astype(float)
    want = roc_auc_score(np.r_[np.zeros(50), np.ones(30)], np.r_[known, unknown])
    assert auroc(known, unknown) == pytest.approx(want)
    assert auroc(np.zeros(3), np.ones(2)) == 1.0 and auroc(np.ones(3), np.ones(2)) == 0.5


def test_fast_open_set_benchmark_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "openset.json"
    p = subprocess.run(
        [sys.executable, "bench/openset.py", "--fast", "--out", str(out),
         "--work", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["rotations"]) >= 2
    assert "msp" in result["candidates"] and result["recommended"] in result["candidates"]
    for name, c in result["candidates"].items():
        assert 0.0 <= c["mean"]["auroc"] <= 1.0, name
        assert 0.0 <= c["mean"]["known_flagged_rate"] <= 1.0, name
        assert c["size_mb"] >= 0.0, name
    classifier = result["baseline_no_openset"]["mean"]
    assert 0 <= classifier["known_macro_f1"] <= 1 and 0 <= classifier["known_accuracy"] <= 1
    md = out.with_suffix(".md").read_text()
    assert "| score |" in md and "msp" in md and "The probe on the known species" in md
    # the trade-off grid: its default setting (the pipeline's cost ratio) is the deployed row; a
    # higher cost ratio, a lower miss target or a lower pass rate fires the same rules at lower
    # thresholds (1 / (1 + k), or refitted), so it never alerts less
    rows = list(result["deployed_trade_off"].values())
    by_miss = {(c["known_pass_rate"], c["venomous_miss_target"]): c["mean"]
               for c in rows if "venomous_miss_target" in c}  # fmt: skip
    by_cost = {(c["known_pass_rate"], -c["venomous_cost_ratio"]): c["mean"]
               for c in rows if "venomous_cost_ratio" in c}  # fmt: skip
    assert len(by_miss) > 1 and len(by_cost) > 1
    assert len(by_miss) + len(by_cost) == len(rows)
    meta = result["meta"]
    default = by_cost[(meta["pass_rate"], -meta["venomous_cost_ratio"])]
    assert default == pytest.approx(result["candidates"]["deployed"]["mean"])
    for grid in (by_miss, by_cost):
        for (pass_rate, rule), m in grid.items():
            for (other_pass, other_rule), o in grid.items():
                if other_pass <= pass_rate and other_rule <= rule:
                    for rate in ("known_flagged_rate", "unknown_venomous_caught_rate",
                                 "known_harmless_alerted_rate"):  # fmt: skip
                        assert o[rate] >= m[rate] - 1e-12, (rate, pass_rate, rule, other_pass)
                    # the verdict warns on at least as many photos: fewer told harmless
                    for rate in ("known_harmless_no_warning_rate",
                                 "known_venomous_no_warning_rate",
                                 "unknown_venomous_no_warning_rate"):  # fmt: skip
                        assert o[rate] <= m[rate] + 1e-12, (rate, pass_rate, rule, other_pass)
    assert "| venomous rule | known_pass_rate |" in md and "| cost ratio 32 | 0.95 |" in md
    assert "| no warning: harmless | venomous | unknown venomous |" in md


def _photo_folder(root: Path, species: int = 6, per_species: int = 10) -> Path:
    """`root/<species>/*.jpg` of coloured blobs (a colour per species) and `species.yaml`, every
    other species venomous: a folder `bench/openset.py --data` reads like ph-snakes-dev."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    lines = []
    for i in range(species):
        name = f"Testus species{chr(97 + i)}"
        lines.append(f"- name: {name}\n  common: Test {i}\n  venomous: {str(i % 2 == 0).lower()}\n")
        (root / name).mkdir(parents=True)
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        for k in range(per_species):
            im = Image.new("RGB", (96, 96), tuple(int(v) for v in rng.integers(0, 255, 3)))
            draw = ImageDraw.Draw(im)
            for _ in range(5):
                x, y = rng.integers(0, 70, 2)
                draw.ellipse([x, y, x + 26, y + 16], fill=colour)
            im.save(root / name / f"{k}.jpg", quality=95)
    (root / "species.yaml").write_text("".join(lines))
    return root


@pytest.mark.slow
def test_open_set_benchmark_adapts_trunks_per_fold(tmp_path: Path) -> None:
    """`--adapt`: per outer fold, the trunk is fine-tuned on that fold's training photos by the
    pipeline's `snakeid.train.adapt`; its columns replace the frozen ones (the cached fold
    features differ from the frozen trunk's), and a second run reads them back, equal."""
    data = _photo_folder(tmp_path / "photos")
    out = tmp_path / "openset.json"
    cmd = [sys.executable, "bench/openset.py", "--data", str(data), "--out", str(out),
           "--work", str(tmp_path / "work"), "--cv-work", str(tmp_path / "cv"),
           "--rotations", "2", "--partitions", "1", "--folds", "2", "--views", "2",
           "--adapt", "efficientnet_lite0", "--adapt-epochs", "1",
           "--outer-folds", "1"]  # fmt: skip
    results = []
    for _ in range(2):
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        results.append(json.loads(out.read_text()))
    assert results[0] == results[1]  # the second run read the adapted features back
    meta = results[0]["meta"]
    assert meta["adapt"]["backbones"] == ["efficientnet_lite0"] and meta["adapt"]["epochs"] == 1
    assert meta["outer_folds_evaluated"] == 1 and meta["folds"] == 2
    adapted = sorted((tmp_path / "work/adapted").glob("*-efficientnet_lite0.npy"))
    assert len(adapted) == 2  # one per rotation (its one outer fold)
    frozen = np.load(tmp_path / "cv/real/pooled_v2.npy")[:, :, :1280].astype(np.float32)
    for path in adapted:
        x = np.load(path).astype(np.float32)
        assert x.shape == frozen.shape and not np.allclose(x, frozen, atol=1e-2), path
    md = out.with_suffix(".md").read_text()
    assert "Adapted per outer fold" in md and "Partial run" in md


# ---------------------------------------------------------------------------------------------
# The deployed score: fitted out of fold, a torch module, an ONNX output


def _soft_logits(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """`_logits` tempered: a max softmax probability within float32's reach of 1."""
    return _logits(x, centres) / 20


def _fitted(seed: int = 0):
    x, y, centres = _clusters(seed)
    folds = np.arange(len(y)) % 5
    logits = _soft_logits(x, centres)
    return UnknownScore.fit(
        x[None], x, logits, bank_folds=folds, held_folds=folds, known_pass_rate=0.9
    ), x, y, centres  # fmt: skip


def test_unknown_score_threshold_passes_the_held_out_share() -> None:
    score, x, _, centres = _fitted()
    assert score.fit_report["held_flagged_rate"] <= 0.1 + 1e-9
    far = np.full((5, x.shape[1]), 40.0, np.float32) * np.eye(x.shape[1], dtype=np.float32)[:5]
    assert (score.score(far, _soft_logits(far, centres)) > score.threshold).all()


def test_unknown_score_out_of_fold_excludes_the_photos_own_fold() -> None:
    # Each photo duplicated in its own fold: with the fold excluded its nearest neighbour is
    # another photo, so the held-out 1-NN distances are not all zero.
    score, *_ = _fitted()
    assert score.combined.parts[1].bank.shape[0] == 120  # the deployed bank: every photo
    x, y, centres = _clusters(1)
    folds = np.arange(len(y)) % 4
    logits = _logits(x, centres)
    fitted = UnknownScore.fit(
        x[None], x, logits, bank_folds=folds, held_folds=folds, known_pass_rate=0.9
    )
    assert fitted.combined.offset[1].min() > 1e-4  # mean 1-NN distance per class, out of fold


def test_unknown_score_bank_row_is_a_photos_mean_over_its_views() -> None:
    x, y, centres = _clusters(2)
    rng = np.random.default_rng(0)
    views = np.stack([x, np.abs(x + rng.normal(0, 0.5, x.shape)).astype(np.float32)])
    folds = np.arange(len(y)) % 4
    logits = _logits(x, centres)
    fitted = UnknownScore.fit(
        views, x, logits, bank_folds=folds, held_folds=folds, known_pass_rate=0.9
    )
    mean = NearestNeighbour.fit(views.mean(0), power=UnknownScore.KNN_POWER)
    np.testing.assert_allclose(fitted.bank, mean.bank, rtol=1e-6)
    # the photo itself (view 0) is no longer exactly a bank row: its distance is not zero
    assert (fitted.combined.parts[1].score(x, logits) > 1e-6).all()


def test_unknown_score_module_and_state_match_numpy() -> None:
    import torch

    score, x, _, centres = _fitted()
    x = x + np.random.default_rng(1).normal(0, 0.3, x.shape).astype(np.float32)  # not the bank
    logits = _soft_logits(x, centres)
    again = UnknownScore.from_state(score.state())
    assert again.threshold == score.threshold
    with torch.inference_mode():
        got = again.module()(torch.from_numpy(x), torch.from_numpy(logits.astype(np.float32)))
    assert np.allclose(got.numpy(), score.score(x, logits), atol=1e-4)


def test_onnx_unknown_score_and_threshold_equal_pytorch(tmp_path: Path) -> None:
    import torch

    from snakeid.contract import load_meta
    from snakeid.model.export import parity
    from snakeid.model.onnxio import ort_session
    from tiny_model import IMAGE_SIZE, build_tiny_model, tiny_unknown_score

    path, model = build_tiny_model(tmp_path, favour=None)
    rng = np.random.default_rng(0)
    batches = [
        (rng.uniform(-2, 2, (6, 3, 1, 1)) + rng.normal(0, 1, (6, 3, IMAGE_SIZE, IMAGE_SIZE)))
        .astype(np.float32) for _ in range(2)
    ]  # fmt: skip
    result = parity(model, ort_session(path), batches)
    assert result["max_abs_unknown_score_diff"] < 1e-3 and result["top1_agreement"] == 1.0
    with torch.inference_mode():
        _, ref = model(torch.from_numpy(batches[0]))
    got = ort_session(path).run(["unknown_score"], {"input": batches[0]})[0]
    threshold = load_meta(tmp_path / "model_meta.json").unknown_threshold
    assert threshold == tiny_unknown_score(model.net, IMAGE_SIZE).threshold
    assert ((got > threshold) == (ref.numpy() > threshold)).all()
