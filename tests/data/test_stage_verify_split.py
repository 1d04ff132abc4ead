"""The verify and split stage scripts, run as DVC runs them: a subprocess in the project root."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from snakeid.data.manifest import CLEAN_COLUMNS, MANIFEST_COLUMNS, SPLITS

STAGES = Path(__file__).resolve().parents[2] / "stages"
SPECIES = [
    {"name": "Naja kaouthia", "common": "Monocled Cobra", "venomous": True},
    {"name": "Bungarus fasciatus", "common": "Banded Krait", "venomous": True},
    {"name": "Daboia siamensis", "common": "Eastern Russell's Viper", "venomous": True},
]
PARAMS = {
    "base": {"seed": 7, "species_file": "data/taxa.yaml"},
    "verify": {"min_side": 32, "resize_shorter": 64, "near_dup_distance": 4, "max_pixels": 10**7},
    "split": {"train": 0.6, "val": 0.2, "test": 0.2},
}
VERIFY = ["verify.py", "--raw", "data/raw", "--out", "data/clean"]
VERIFY += ["--metrics", "metrics/verify.json", "--report", "reports/verify.json"]
VERIFY += ["--dropped", "reports/verify_dropped.csv"]
SPLIT = [
    "split.py",
    "--clean",
    "data/clean",
    "--out",
    "data/split",
    "--metrics",
    "metrics/split.json",
    "--report",
    "reports/split.json",
]


def stage(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(STAGES / argv[0]), *argv[1:]]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root with params, a species file and a raw manifest of 12 photos (2 bad)."""
    (tmp_path / "data" / "raw" / "images").mkdir(parents=True)
    (tmp_path / "data" / "taxa.yaml").write_text(yaml.safe_dump(SPECIES))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    rows = []
    for i in range(12):
        taxon = SPECIES[i % 2]["name"]  # the third species has no photos
        path = Path("data/raw/images") / f"demo-{i:03d}.jpg"
        grid = np.random.default_rng(i).integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(grid).resize((96, 72), Image.Resampling.BICUBIC).save(tmp_path / path)
        obs = f"obs-{i // 2}" if i < 4 else f"obs-{i}"
        rows.append(dict.fromkeys(MANIFEST_COLUMNS, "") | {"photo_id": f"demo-{i:03d}"})
        rows[-1] |= {"observation_id": obs, "taxon": taxon, "path": path.as_posix()}
    (tmp_path / rows[0]["path"]).write_bytes(b"")  # broken
    rows[1]["path"] = "data/raw/images/gone.jpg"  # missing
    rows[2]["taxon"] = rows[3]["taxon"] = SPECIES[0]["name"]  # keep obs-1 one species
    with open(tmp_path / "data" / "raw" / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


def test_verify_then_split(project: Path) -> None:
    done = stage(project, VERIFY)
    assert done.returncode == 0, done.stderr
    assert json.loads((project / "metrics" / "verify.json").read_text()) == {
        "kept": 10,
        "dropped": 2,
    }
    metrics = json.loads((project / "reports" / "verify.json").read_text())
    assert (metrics["seen"], metrics["kept"], metrics["dropped"]) == (12, 10, 2)
    assert (
        metrics["dropped_by_reason"]["missing"] == metrics["dropped_by_reason"]["unreadable"] == 1
    )
    with open(project / "reports" / "verify_dropped.csv", newline="") as f:
        assert sorted(r["reason"] for r in csv.DictReader(f)) == ["missing", "unreadable"]
    with open(project / "data" / "clean" / "manifest.csv", newline="") as f:
        clean = list(csv.DictReader(f))
    assert len(clean) == 10
    assert all((project / r["path"]).is_file() for r in clean)
    assert all(min(int(r["width"]), int(r["height"])) == 64 for r in clean)
    assert clean[0]["path"] == "data/clean/images/naja_kaouthia/demo-002.jpg"

    done = stage(project, SPLIT)
    assert done.returncode == 0, done.stderr
    split = json.loads((project / "reports" / "split.json").read_text())
    assert split["photos"]["total"] == 10
    headline = json.loads((project / "metrics" / "split.json").read_text())
    keys = ("train", "val", "test", "unknown")
    assert headline == {"photos": {k: split["photos"][k] for k in keys}}
    assert split["photos"]["unknown"] == 0  # no species held out in these params
    assert split["missing_species"] == ["Daboia siamensis"]
    n = 0
    for x in SPLITS:
        with open(project / "data" / "split" / f"{x}.csv", newline="") as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames or ()) == CLEAN_COLUMNS
            rows = list(reader)
        assert all(r["split"] == x for r in rows)
        n += len(rows)
    assert n == 10


@pytest.mark.parametrize(
    ("argv", "section", "bad", "key"),
    [
        (VERIFY, "verify", {"near_dup_distance": -1}, "verify.near_dup_distance"),
        (VERIFY, "verify", {"min_sides": 3}, "verify.min_sides"),
        (VERIFY, "base", {"image_size": 8}, "base.image_size"),
        (SPLIT, "split", {"train": 0.5, "val": 0.2, "test": 0.2}, "split:"),
        (SPLIT, "split", {"test": -0.2}, "split.test"),
    ],
)
def test_bad_params_fail_with_one_line(
    project: Path, argv: list[str], section: str, bad: dict, key: str
) -> None:
    params = PARAMS | {section: PARAMS[section] | bad}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    done = stage(project, argv)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], done.stderr
    assert not (project / argv[argv.index("--out") + 1]).exists()  # nothing was done


def test_missing_raw_manifest_is_one_line(project: Path) -> None:
    (project / "data" / "raw" / "manifest.csv").unlink()
    done = stage(project, VERIFY)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: data/raw/manifest.csv: raw manifest not found"
    ]
