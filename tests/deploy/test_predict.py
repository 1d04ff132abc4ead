"""`Predictor` and `snakeid predict`: outputs, batching, thresholds, errors, and no torch."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snakeid.contract import ModelMetaError
from snakeid.deploy.cli import main
from snakeid.deploy.predict import Predictor
from snakeid.model.calibration import softmax
from snakeid.model.decision import VERDICTS
from tiny_model import NO_TORCH_MAIN, SPECIES, build_tiny_model, demo_photo, pillow_limits_restored


@pytest.fixture(scope="module", autouse=True)
def _pillow_limits() -> Iterator[None]:
    with pillow_limits_restored():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("model")
    path, net = build_tiny_model(out, favour=None)
    return path, net


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as a user would have it: nested, mixed case, a non-image, a broken image."""
    root = tmp_path_factory.mktemp("photos")
    demo_photo(root / "b.jpg", seed=1)
    demo_photo(root / "a.JPG", (200, 300), seed=2)
    demo_photo(root / "trip" / "c.jpg", (500, 260), seed=3)
    (root / "trip" / "notes.txt").write_text("not a photo: skipped, and said so")
    (root / "trip" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return root


def test_probabilities_match_the_torch_model(model_dir: tuple[Path, object], photos: Path) -> None:
    import torch

    from snakeid.data.dataset import eval_transform, load_rgb

    model, net = model_dir
    predictor = Predictor(model)
    paths = [photos / "b.jpg", photos / "a.JPG"]
    with torch.no_grad():
        x = torch.stack(
            [eval_transform(predictor.meta.preprocess.crop)(load_rgb(p)) for p in paths]
        )
        logits, unknown = net(x)
        expected = torch.softmax(logits, dim=1).numpy()
    results = predictor.predict_images([Image.open(p) for p in paths], top_k=len(SPECIES))
    for row, result in zip(expected, results, strict=True):
        got = {p.species: p.probability for p in result.predictions}
        assert np.allclose([got[s["name"]] for s in SPECIES], row, atol=1e-5)
    # the unknown score on the same arrays (the tiny net's score scale magnifies the ~1e-6
    # differences between PIL's and torchvision's resizing)
    for score, result in zip(
        unknown.numpy(), predictor.predict_arrays(list(x.numpy())), strict=True
    ):
        assert result.unknown_score == pytest.approx(float(score), rel=1e-4, abs=1e-4)
        assert result.unknown == (score > predictor.meta.unknown_threshold)


def test_batching_does_not_change_results(model_dir: tuple[Path, object], photos: Path) -> None:
    images = [Image.open(p) for p in sorted(photos.rglob("*.jpg"))] * 2
    one = Predictor(model_dir[0], batch_size=1).predict_images(images)
    many = Predictor(model_dir[0], batch_size=4).predict_images(images)
    for a, b in zip(one, many, strict=True):
        assert [p.species for p in a.predictions] == [p.species for p in b.predictions]
        assert np.allclose(
            [p.probability for p in a.predictions],
            [p.probability for p in b.predictions],
            atol=1e-6,
        )


def test_decision_flags(model_dir: tuple[Path, object]) -> None:
    predictor = Predictor(model_dir[0], low_confidence=0.5, venomous_threshold=0.5)
    # Species 0 and 2 are venomous.
    known = predictor.meta.unknown_threshold - 1.0  # an unknown score under the threshold
    sure_harmless = predictor.summarise(np.array([0.05, 0.9, 0.03, 0.02]), known, 3)
    assert not sure_harmless.low_confidence and not sure_harmless.possibly_venomous
    assert not sure_harmless.unknown
    split = predictor.summarise(np.array([0.3, 0.4, 0.3, 0.0]), known, 3)
    assert split.low_confidence and split.possibly_venomous
    assert split.predictions[0].species == "Ptyas korros"
    assert split.venomous_probability == pytest.approx(0.6)
    # a species the model does not know: the closest is still listed, and it may be venomous
    unknown = predictor.summarise(np.array([0.05, 0.9, 0.03, 0.02]), known + 2.0, 3)
    assert unknown.unknown and unknown.possibly_venomous
    assert unknown.predictions[0].species == "Ptyas korros"


def test_top_k_bounds(model_dir: tuple[Path, object]) -> None:
    predictor = Predictor(model_dir[0])
    with pytest.raises(ValueError, match="between 1 and 4"):
        predictor.check_top_k(5)
    with pytest.raises(ValueError, match="between 1 and 4"):
        predictor.check_top_k(0)


def test_int8_qdq_model(tmp_path: Path, photos: Path) -> None:
    model, _ = build_tiny_model(tmp_path, quantize=True)
    (result,) = Predictor(model).predict_images([Image.open(photos / "b.jpg")])
    assert result.predictions[0].species == SPECIES[0]["name"]
    assert sum(p.probability for p in result.predictions) <= 1 + 1e-9


def test_meta_problems_are_clear(model_dir: tuple[Path, object], tmp_path: Path) -> None:
    model = model_dir[0]
    meta = json.loads((model.parent / "model_meta.json").read_text())
    with pytest.raises(ModelMetaError, match="model metadata not found"):
        Predictor(model, tmp_path / "nope.json")
    cases = {
        "format": ({**meta, "format": "other/2"}, "'format'"),
        "species": ({**meta, "species": meta["species"][:3]}, "4 outputs, metadata lists 3"),
        "input": ({**meta, "input_name": "pixels"}, "input 'pixels'"),
        "threshold": (
            {**meta, "decision": {"low_confidence_threshold": 2}},
            "low_confidence_threshold",
        ),
        "preprocess": (
            {**meta, "preprocess": {**meta["preprocess"], "color": "BGR"}},
            "preprocess.color",
        ),
    }
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(ModelMetaError, match=message):
            Predictor(model, path)


def test_softmax_is_stable_for_large_logits() -> None:
    p = softmax(np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32))
    assert np.isfinite(p).all() and p[0, 0] == pytest.approx(1.0)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_streams_one_object_per_file(model_dir, photos, capsys) -> None:
    code, out, err = run_cli(
        capsys, "predict", str(photos), "--model", str(model_dir[0]), "--format", "json"
    )
    assert code == 1  # broken.png failed; the other three are still written
    lines = [json.loads(line) for line in out.splitlines()]
    # Recursive, sorted, image extensions only (notes.txt is reported on stderr, not a row).
    assert [Path(r["path"]).relative_to(photos).as_posix() for r in lines] == [
        "a.JPG",
        "b.jpg",
        "trip/broken.png",
        "trip/c.jpg",
    ]
    keys = {
        "path",
        "verdict",
        "reason",
        "predictions",
        "venomous_probability",
        "possibly_venomous",
        "low_confidence",
        "unknown_score",
        "unknown_margin",
        "unknown",
        "error",
        "synthetic",
    }
    assert all(set(r) == keys for r in lines)  # one schema for good and failed photos
    broken = lines[2]
    assert broken["error"] and broken["predictions"] == []
    assert broken["possibly_venomous"] is None and broken["venomous_probability"] is None
    assert broken["verdict"] is None and broken["reason"] is None
    good = [r for i, r in enumerate(lines) if i != 2]
    assert all(r["error"] is None and len(r["predictions"]) == 3 for r in good)
    assert all(r["possibly_venomous"] == (r["verdict"] != "harmless") for r in good)
    assert all(r["verdict"] in VERDICTS and r["reason"] for r in good)
    assert not any(r["synthetic"] for r in lines)
    told = Counter(r["verdict"] for r in good)
    counts = ", ".join(f"{told[v]} {v}" for v in VERDICTS)
    assert err.strip().splitlines()[-1] == (
        f"snakeid: classified 3 of 4 photos ({counts}); 1 failed (exit 1)"
    )
    # the file that is not an image is named and counted, not silently skipped
    assert "snakeid: skipped 1 file(s) that are not images" in err
    assert f"  {photos / 'trip' / 'notes.txt'}" in err.splitlines()


def _venomous_share(row: dict[str, str], top_k: int) -> float:
    """Summed probability of the venomous species among a CSV row's top-k columns."""
    return sum(
        float(row[f"probability_{k}"])
        for k in range(1, top_k + 1)
        if row[f"venomous_{k}"] == "true"
    )


def test_cli_csv_is_one_row_per_photo(model_dir, photos, capsys) -> None:
    args = [str(photos / "b.jpg"), str(photos / "trip"), "--model", str(model_dir[0])]
    code, out, _ = run_cli(capsys, "predict", *args, "--format", "csv", "--top-k", "4")
    assert code == 1  # broken.png
    rows = list(csv.DictReader(io.StringIO(out)))
    ranked = [
        f"{c}_{k}"
        for k in range(1, 5)
        for c in ("species", "common_name", "venomous", "probability")
    ]
    assert list(rows[0]) == [
        "path",
        "verdict",
        "reason",
        *ranked,
        "venomous_probability",
        "possibly_venomous",
        "low_confidence",
        "unknown_score",
        "unknown_margin",
        "unknown",
        "error",
    ]
    assert [Path(r["path"]).name for r in rows] == ["b.jpg", "broken.png", "c.jpg"]
    ok = [r for r in rows if not r["error"]]
    assert len(ok) == 2
    for r in ok:
        probs = [float(r[f"probability_{k}"]) for k in range(1, 5)]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
        assert {r[f"species_{k}"] for k in range(1, 5)} == {s["name"] for s in SPECIES}
        # With every species in the columns, venomous_probability is exactly their venomous sum.
        assert float(r["venomous_probability"]) == pytest.approx(_venomous_share(r, 4), abs=1e-5)
        assert r["low_confidence"] == str(probs[0] < 0.5).lower()
        # the verdict from the columns, thresholds 0.5 and 0.5, nothing flagged unknown
        if r["venomous_1"] == "true":
            expected = "venomous"
        elif probs[0] < 0.5 or float(r["venomous_probability"]) >= 0.5:
            expected = "possibly_venomous"
        else:
            expected = "harmless"
        assert r["verdict"] == expected and r["unknown"] == "false"
        assert r["possibly_venomous"] == str(expected != "harmless").lower()
    (broken,) = [r for r in rows if r["error"]]
    assert Path(broken["path"]).name == "broken.png"
    assert not any(v for k, v in broken.items() if k not in ("path", "error"))


def test_cli_csv_long_is_one_row_per_rank(model_dir, photos, capsys) -> None:
    args = [str(photos / "b.jpg"), str(photos / "trip"), "--model", str(model_dir[0])]
    code, out, _ = run_cli(capsys, "predict", *args, "--format", "csv", "--top-k", "2", "--long")
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == [
        "path",
        "verdict",
        "reason",
        "rank",
        "species",
        "common_name",
        "venomous",
        "probability",
        "venomous_probability",
        "possibly_venomous",
        "low_confidence",
        "unknown_score",
        "unknown_margin",
        "unknown",
        "error",
    ]
    ok = [r for r in rows if not r["error"]]
    assert len(ok) == 4 and [r["rank"] for r in ok] == ["1", "2", "1", "2"]
    assert all(r["venomous"] in ("true", "false") and 0 <= float(r["probability"]) <= 1 for r in ok)
    for first, second in (ok[0:2], ok[2:4]):  # the per-photo columns repeat on each rank
        assert first["path"] == second["path"]
        for column in ("verdict", "reason", "venomous_probability", "possibly_venomous"):
            assert first[column] == second[column] != ""
    assert [r["path"].endswith("broken.png") for r in rows if r["error"]] == [True]


def test_cli_long_needs_csv(model_dir, photos, capsys) -> None:
    code, out, err = run_cli(
        capsys, "predict", str(photos / "b.jpg"), "--model", str(model_dir[0]), "--long"
    )
    assert code == 2 and out == "" and "--long applies to --format csv only" in err


def test_cli_table_is_aligned_and_marks_venomous(tmp_path, photos, capsys) -> None:
    model, _ = build_tiny_model(tmp_path, favour=0)  # species 0 (venomous) wins
    code, out, _ = run_cli(capsys, "predict", str(photos), "--model", str(model))
    assert code == 1  # broken.png
    scope, *lines = out.splitlines()
    assert scope == (
        "# the model knows 4 snake species (the region they come from is not stated); "
        "a snake of any other species may be one it does not know"
    )
    header = ["PATH", "#", "SPECIES", "COMMON", "NAME", "PROB", "VENOMOUS", "UNKNOWN", "MARGIN"]
    assert lines[0].split() == header
    first = next(line for line in lines if line.startswith(str(photos / "a.JPG")))
    assert "Naja kaouthia" in first and "Monocled Cobra" in first and "VENOMOUS" in first
    assert first.index("Naja") == lines[0].index("SPECIES")  # columns line up
    assert first.index("VENOMOUS") == lines[0].index("VENOMOUS")
    assert float(first[lines[0].index("UNKNOWN") :].split()[0]) < 0  # the margin, on rank 1
    verdict = lines[lines.index(first) + 3].strip()  # under the top 3: the verdict and why
    assert verdict.startswith("=> Venomous — keep away: most likely the Monocled Cobra (")
    assert not any("Not one of" in line for line in lines)  # the default threshold: known
    assert any("broken.png" in line and "error:" in line for line in lines)


def test_cli_says_when_a_photo_is_not_a_species_it_knows(tmp_path, photos, capsys) -> None:
    # a threshold under every score: every photo is flagged unknown
    model, _ = build_tiny_model(tmp_path, favour=1, decision={"unknown_threshold": -1e9})
    code, out, _ = run_cli(capsys, "predict", str(photos / "b.jpg"), "--model", str(model))
    assert code == 0
    assert "UNKNOWN" in out.splitlines()[1]
    assert "Not one of the 4 species this model knows" in out
    assert "Ptyas korros" in out  # the closest species is still listed
    args = [str(photos / "b.jpg"), "--model", str(model), "--format", "csv"]
    code, out, _ = run_cli(capsys, "predict", *args)
    (row,) = csv.DictReader(io.StringIO(out))
    assert row["unknown"] == "true" and row["possibly_venomous"] == "true"  # harmless top-1
    assert row["species_1"] == "Ptyas korros" and float(row["unknown_score"]) > -1e9


def test_cli_exit_codes(model_dir, photos, tmp_path, capsys) -> None:
    model = str(model_dir[0])
    good = [str(photos / "b.jpg"), str(photos / "a.JPG")]
    code, out, err = run_cli(capsys, "predict", *good, "--model", model, "--format", "csv")
    assert code == 0 and len(out.splitlines()) == 3
    told = Counter(r["verdict"] for r in csv.DictReader(io.StringIO(out)))
    counts = ", ".join(f"{told[v]} {v}" for v in VERDICTS)
    assert err.strip() == f"snakeid: classified 2 of 2 photos ({counts}) (exit 0)"
    code, out, err = run_cli(capsys, "predict", good[0], good[0], "--model", model)
    assert code == 0 and err.strip().startswith("snakeid: classified 2 of 2 photos (")

    # One good file and one missing file: the good one is written, the run still fails.
    missing = tmp_path / "missing.jpg"
    code, out, err = run_cli(
        capsys, "predict", good[0], str(missing), "--model", model, "--format", "csv"
    )
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["path"] for r in rows] == [good[0], str(missing)]
    assert rows[0]["species_1"] and not rows[0]["error"]
    assert "cannot read file" in rows[1]["error"]
    assert err.strip().startswith("snakeid: classified 1 of 2 photos (")
    assert err.strip().endswith("; 1 failed (exit 1)")

    code, _, err = run_cli(capsys, "predict", str(photos / "trip" / "broken.png"), "--model", model)
    assert code == 1 and (
        "classified 0 of 1 photos (0 venomous, 0 possibly_venomous, 0 harmless); 1 failed (exit 1)"
        in err
    )

    # A folder without images is a usage error, reported before anything is classified.
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no photos here")
    for nothing in (tmp_path / "empty", tmp_path / "texts"):
        code, out, err = run_cli(capsys, "predict", good[0], str(nothing), "--model", model)
        assert code == 2 and out == ""
        assert err.strip().splitlines() == [
            f"snakeid: error: no image files found under {nothing} (looked for "
            ".bmp .gif .jpeg .jpg .mpo .png .tif .tiff .webp)"
        ]

    code, _, err = run_cli(
        capsys, "predict", str(photos), "--model", str(tmp_path / "model_int8.onnx")
    )
    assert err.strip().splitlines() == [
        f"snakeid: error: model not found: {tmp_path / 'model_int8.onnx'} (from --model)"
    ]
    assert code == 2
    code, _, err = run_cli(capsys, "predict", str(photos), "--model", model, "--top-k", "9")
    assert code == 2 and "top-k must be between 1 and 4" in err
    code, _, err = run_cli(capsys, "predict", str(photos), "--model", model, "--batch-size", "0")
    assert code == 2 and err.strip() == "snakeid: error: batch_size must be at least 1, got 0"


def test_cli_lets_a_bug_raise_instead_of_calling_it_a_usage_error(
    model_dir, photos, monkeypatch
) -> None:
    """Only the project's own error types are the user's to fix; any other ValueError is a bug
    and keeps its traceback."""

    def broken(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr("snakeid.deploy.cli.Predictor", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["predict", str(photos), "--model", str(model_dir[0])])


def _help_blocks(text: str) -> dict[str, str]:
    """`--help` text -> {first option string: its whole (wrapped) help, one line}."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            blocks[current] = line
        elif current and line.startswith(" " * 10):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_help_shows_every_default_and_the_exit_codes(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    blocks = _help_blocks(out)
    assert "--model" in blocks and "--top-k" in blocks and len(blocks) >= 9
    missing = [opt for opt, text in blocks.items() if opt != "-h" and "default:" not in text]
    assert missing == []
    assert "(default: 3)" in blocks["--top-k"]
    if command == "predict":
        assert "(default: table)" in blocks["--format"]
        exit_lines = [" ".join(line.split()[:2]) for line in out.splitlines()]
        assert {"0 every", "1 some", "2 usage"} <= set(exit_lines)


@pytest.mark.parametrize(
    ("data_source", "synthetic"), [("demo-synthetic", True), ("folder", False), (None, False)]
)
def test_cli_says_when_the_model_is_synthetic(
    data_source, synthetic, tmp_path, photos, capsys
) -> None:
    model, _ = build_tiny_model(tmp_path, data_source=data_source)
    predictor = Predictor(model)
    assert predictor.meta.data_source == data_source and predictor.meta.synthetic is synthetic
    assert predictor.info()["synthetic"] is synthetic
    args = ["predict", str(photos / "b.jpg"), "--model", str(model), "--format", "json"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0
    (line,) = [json.loads(line) for line in out.splitlines()]
    assert line["synthetic"] is synthetic
    warning = (
        "snakeid: warning: this model was trained on synthetic demo photos; "
        "it does not identify real snakes"
    )
    assert (warning in err.splitlines()) is synthetic
    assert ("synthetic" in err) is synthetic  # no other mention for a real model


def test_predict_path_never_imports_torch(model_dir, photos) -> None:
    """Run the CLI with torch unimportable, then check nothing even tried to load it."""
    argv = ["predict", str(photos), "--model", str(model_dir[0]), "--format", "json"]
    script = (
        "import sys, json; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "from snakeid.deploy.cli import main\n"
        "import snakeid.deploy.serve\n"
        f"code = main({argv!r})\n"
        "result = {'code': code, 'torch': sys.modules['torch'] is None}\n"
        "print(json.dumps(result), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    # Exit status 1: the folder's broken.png; the three good photos are still classified.
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"code": 1, "torch": True}
    assert len(proc.stdout.splitlines()) == 4
    # The same through the real entry point the server subprocess uses.
    argv = ["predict", str(photos / "b.jpg"), "--model", str(model_dir[0])]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_MAIN, *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
