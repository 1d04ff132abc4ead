"""The verdict (venomous | possibly_venomous | harmless) and its reason: one rule, the same in
predict's table, CSV and JSON, the API, and evaluate's rows; the model's region everywhere."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from snakeid.deploy.cli import main
from snakeid.deploy.predict import MODEL_ENV, find_model
from snakeid.deploy.predict_output import BatchProgress
from snakeid.deploy.serve import create_app
from snakeid.model.decision import (
    CONFIDENT_HARMLESS,
    HEADLINES,
    NOT_SURE,
    UNKNOWN_SPECIES,
    VENOMOUS_CHANCE,
    VENOMOUS_SPECIES,
    causes,
    reason,
    verdicts,
)
from snakeid.taxa import Species
from tiny_model import build_tiny_model, demo_photo, pillow_limits_restored

TAXA = [
    Species("Naja kaouthia", "Monocled Cobra", True),
    Species("Ptyas korros", "Indo-Chinese Rat Snake", False),
    Species("Bungarus fasciatus", "Banded Krait", True),
]


@pytest.fixture(scope="module", autouse=True)
def _pillow_limits() -> Iterator[None]:
    with pillow_limits_restored():
        yield


def test_the_first_cause_that_applies_decides() -> None:
    probs = np.array(
        [
            [0.10, 0.85, 0.05],  # unknown, though confidently a harmless species
            [0.60, 0.30, 0.10],  # a venomous species is the answer
            [0.20, 0.45, 0.35],  # not sure (under 0.5), top-1 harmless
            [0.04, 0.90, 0.06],  # confident and harmless, but 10 % on venomous species
            [0.01, 0.98, 0.01],  # confident and harmless
        ]
    )
    unknown = np.array([True, False, False, False, False])
    cause = causes(
        probs,
        [s.venomous for s in TAXA],
        unknown,
        venomous_threshold=0.05,
        low_confidence_threshold=0.5,
    )
    assert cause.tolist() == [
        UNKNOWN_SPECIES,
        VENOMOUS_SPECIES,
        NOT_SURE,
        VENOMOUS_CHANCE,
        CONFIDENT_HARMLESS,
    ]
    assert verdicts(cause).tolist() == [
        "possibly_venomous",
        "venomous",
        "possibly_venomous",
        "possibly_venomous",
        "harmless",
    ]
    words = [reason(c, p, TAXA, region="Testland") for c, p in zip(cause, probs, strict=True)]
    assert words == [
        "looks like none of the 3 snake species of Testland this model knows",
        "most likely the Monocled Cobra (60%), a venomous species",
        "the model is not sure: its best guess, the Indo-Chinese Rat Snake, has only 45%",
        "could be the Banded Krait (6.0%; 10% on venomous species in all)",
        "most likely the Indo-Chinese Rat Snake (98%), a harmless species",
    ]
    assert reason(UNKNOWN_SPECIES, probs[0], TAXA) == (
        "looks like none of the 3 species this model knows"
    )


# The four verdict causes a person meets, each forced on the tiny model by its thresholds.
CASES = {
    "venomous": ({"favour": 0}, "venomous", "most likely the Monocled Cobra ("),
    "harmless": ({"favour": 1}, "harmless", "most likely the Indo-Chinese Rat Snake ("),
    "not sure": (
        {"favour": 1, "decision": {"low_confidence_threshold": 0.999}},
        "possibly_venomous",
        "the model is not sure: its best guess, the Indo-Chinese Rat Snake, has only ",
    ),
    "unknown": (
        {"favour": 1, "decision": {"unknown_threshold": -1e9}},
        "possibly_venomous",
        "looks like none of the 4 snake species of Testland this model knows",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_output_tells_the_same_verdict(case, tmp_path, capsys) -> None:
    kwargs, expected, why = CASES[case]
    model, _ = build_tiny_model(tmp_path, region="Testland", **kwargs)
    photo = demo_photo(tmp_path / "snake.jpg")

    def run(*fmt: str) -> str:
        assert main(["predict", str(photo), "--model", str(model), *fmt]) == 0
        return capsys.readouterr().out

    (row,) = csv.DictReader(io.StringIO(run("--format", "csv")))
    (line,) = [json.loads(x) for x in run("--format", "json").splitlines()]
    api = TestClient(create_app(model)).post(
        "/predict", files={"file": ("snake.jpg", photo.read_bytes(), "image/jpeg")}
    )
    body = api.json()
    table = run()

    assert row["verdict"] == line["verdict"] == body["verdict"] == expected
    assert row["reason"] == line["reason"] == body["reason"]
    assert row["reason"].startswith(why)
    # possibly_venomous is exactly "anything but harmless", in every output
    assert row["possibly_venomous"] == str(expected != "harmless").lower()
    assert line["possibly_venomous"] is body["possibly_venomous"] is (expected != "harmless")
    assert body["headline"] == HEADLINES[expected]
    assert f"=> {HEADLINES[expected]}: {row['reason']}" in table
    assert table.splitlines()[0] == (
        "# the model knows 4 snake species of Testland; a snake from elsewhere may be one it does "
        "not know"
    )
    if case in ("not sure", "unknown"):  # never harmless
        assert row["low_confidence"] == "true" or row["unknown"] == "true"
    margin = float(row["unknown_margin"])
    assert (margin > 0) == (row["unknown"] == "true")
    assert margin == pytest.approx(body["unknown_score"] - body["model"]["unknown_threshold"])


def test_the_region_travels_to_species_and_health(tmp_path) -> None:
    model, _ = build_tiny_model(tmp_path, region="Testland")
    client = TestClient(create_app(model))
    species = client.get("/species").json()
    assert species["region"] == "Testland"
    assert species["scope"].startswith("knows 4 snake species of Testland")
    assert client.get("/health").json()["model"]["region"] == "Testland"


def test_progress_is_a_line_per_tenth_off_a_terminal_and_a_bar_on_one() -> None:
    log = io.StringIO()  # not a terminal
    progress = BatchProgress(250, log)
    for _ in range(0, 250, 16):
        progress.update(min(16, 250 - progress.done))
    progress.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1] == "snakeid: 250 of 250 photos (100%)"
    assert lines[0] == "snakeid: 32 of 250 photos (12%)"

    small = io.StringIO()
    BatchProgress(99, small).update(99)  # a few photos: the summary line is enough
    assert small.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    bar = BatchProgress(20, tty)
    bar.update(10)
    assert tty.getvalue().startswith("\rsnakeid: [###############...............] 10/20 photos")


def test_the_model_is_found_from_the_environment_or_the_project(tmp_path, monkeypatch) -> None:
    import snakeid.deploy.predict

    model, _ = build_tiny_model(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(snakeid.deploy.predict, "PROJECT", tmp_path / "project")
    monkeypatch.delenv(MODEL_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as e:
        find_model()
    tried = [tmp_path / "models/model_int8.onnx", tmp_path / "project/models/model_int8.onnx"]
    assert f"tried {tried[0]}, {tried[1]}" in str(e.value) and MODEL_ENV in str(e.value)

    monkeypatch.setenv(MODEL_ENV, str(model))
    assert find_model() == model
    assert find_model(tmp_path / "elsewhere" / "model_fp32.onnx").name == "model_fp32.onnx"
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "nope.onnx"))
    with pytest.raises(FileNotFoundError, match=rf"nope.onnx \(from \${MODEL_ENV}\)"):
        find_model()

    monkeypatch.delenv(MODEL_ENV)
    (tmp_path / "project" / "models").mkdir(parents=True)
    project_model = tmp_path / "project" / "models" / "model_int8.onnx"
    project_model.write_bytes(model.read_bytes())
    assert find_model() == project_model  # beside the package's project, from any directory
