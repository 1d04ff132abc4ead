"""`Predictor` and `snakeid predict`: outputs, batching, thresholds, errors, and no torch."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snakeid.cli import main
from snakeid.predict import ModelMetaError, Predictor, softmax
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
    (root / "trip" / "notes.txt").write_text("not a photo, and not listed")
    (root / "trip" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return root


def test_probabilities_match_the_torch_model(model_dir: tuple[Path, object], photos: Path) -> None:
    import torch

    from snakeid.data import eval_transform, load_rgb

    model, net = model_dir
    predictor = Predictor(model)
    paths = [photos / "b.jpg", photos / "a.JPG"]
    with torch.no_grad():
        x = torch.stack(
            [eval_transform(predictor.meta.preprocess.crop)(load_rgb(p)) for p in paths]
        )
        expected = torch.softmax(net(x), dim=1).numpy()
    results = predictor.predict_images([Image.open(p) for p in paths], top_k=len(SPECIES))
    for row, result in zip(expected, results, strict=True):
        got = {p.species: p.probability for p in result.predictions}
        assert np.allclose([got[s["name"]] for s in SPECIES], row, atol=1e-5)


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
    sure_harmless = predictor.summarise(np.array([0.05, 0.9, 0.03, 0.02]), 3)
    assert not sure_harmless.low_confidence and not sure_harmless.possibly_venomous
    split = predictor.summarise(np.array([0.3, 0.4, 0.3, 0.0]), 3)
    assert split.low_confidence and split.possibly_venomous
    assert split.predictions[0].species == "Ptyas korros"
    assert split.venomous_probability == pytest.approx(0.6)


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
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    # Recursive, sorted, image extensions only (notes.txt is not listed).
    assert [Path(r["path"]).relative_to(photos).as_posix() for r in lines] == [
        "a.JPG",
        "b.jpg",
        "trip/broken.png",
        "trip/c.jpg",
    ]
    assert "error" in lines[2] and "predictions" not in lines[2]
    assert all(len(r["predictions"]) == 3 for i, r in enumerate(lines) if i != 2)
    assert "3 image(s) classified, 1 unreadable" in err


def test_cli_csv(model_dir, photos, capsys) -> None:
    args = [str(photos / "b.jpg"), str(photos / "trip"), "--model", str(model_dir[0])]
    code, out, _ = run_cli(capsys, "predict", *args, "--format", "csv", "--top-k", "2")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == [
        "path",
        "rank",
        "species",
        "common_name",
        "venomous",
        "probability",
        "error",
    ]
    ok = [r for r in rows if not r["error"]]
    assert len(ok) == 4 and {r["rank"] for r in ok} == {"1", "2"}
    assert all(r["venomous"] in ("true", "false") and 0 <= float(r["probability"]) <= 1 for r in ok)
    assert [r["path"].endswith("broken.png") for r in rows if r["error"]] == [True]


def test_cli_table_is_aligned_and_marks_venomous(tmp_path, photos, capsys) -> None:
    model, _ = build_tiny_model(tmp_path, favour=0)  # species 0 (venomous) wins
    code, out, _ = run_cli(capsys, "predict", str(photos), "--model", str(model))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["PATH", "#", "SPECIES", "COMMON", "NAME", "PROB", "VENOMOUS"]
    first = next(line for line in lines if line.startswith(str(photos / "a.JPG")))
    assert "Naja kaouthia" in first and "Monocled Cobra" in first and first.endswith("VENOMOUS")
    assert first.index("Naja") == lines[0].index("SPECIES")  # columns line up
    assert any("possibly venomous" in line for line in lines)
    assert any("broken.png" in line and "error:" in line for line in lines)


def test_cli_exit_codes(model_dir, photos, tmp_path, capsys) -> None:
    model = str(model_dir[0])
    code, _, err = run_cli(capsys, "predict", str(photos / "trip" / "broken.png"), "--model", model)
    assert code == 1 and "0 image(s) classified" in err
    (tmp_path / "empty").mkdir()
    for nothing in (tmp_path / "empty", tmp_path / "missing.jpg"):
        assert run_cli(capsys, "predict", str(nothing), "--model", model)[0] == 1
    code, _, err = run_cli(
        capsys, "predict", str(photos), "--model", str(tmp_path / "model_int8.onnx")
    )
    assert code == 2 and "run `dvc repro` first" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "predict", str(photos), "--model", model, "--top-k", "9")
    assert code == 2 and "top-k must be between 1 and 4" in err


def test_predict_path_never_imports_torch(model_dir, photos) -> None:
    """Run the CLI with torch unimportable, then check nothing even tried to load it."""
    argv = ["predict", str(photos), "--model", str(model_dir[0]), "--format", "json"]
    script = (
        "import sys, json; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "from snakeid.cli import main\n"
        "import snakeid.serve\n"
        f"code = main({argv!r})\n"
        "result = {'code': code, 'torch': sys.modules['torch'] is None}\n"
        "print(json.dumps(result), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"code": 0, "torch": True}
    assert len(proc.stdout.splitlines()) == 4
    # The same through the real entry point the server subprocess uses.
    argv = ["predict", str(photos / "b.jpg"), "--model", str(model_dir[0])]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_MAIN, *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
