"""The download stage: the script run as DVC runs it (a subprocess), and the source dispatch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import snakeid.data.sources as sources
from snakeid.data.manifest import read_manifest

SCRIPT = Path(__file__).resolve().parents[2] / "stages" / "download.py"
TINY_DEMO = {
    "observations_rare": 3,
    "observations_common": 4,
    "image_size": 80,
    "broken_files": 1,
    "duplicates": 1,
}


def run_stage(cwd: Path, download: dict, species_file: Path) -> subprocess.CompletedProcess[str]:
    params = {"base": {"seed": 1, "species_file": str(species_file)}, "download": download}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(SCRIPT), "--out", "data/raw"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_demo_download_writes_the_manifest(tmp_path, species_file, species):
    result = run_stage(tmp_path, {"source": "demo", "demo": TINY_DEMO}, species_file)
    assert result.returncode == 0, result.stderr
    rows = read_manifest(tmp_path / "data" / "raw" / "manifest.csv")
    assert {r["taxon"] for r in rows} == {s.name for s in species}
    assert all(r["path"].startswith("data/raw/images/") for r in rows)
    assert all((tmp_path / r["path"]).is_file() for r in rows)
    assert (tmp_path / "data" / "raw" / "skipped.csv").is_file()


@pytest.mark.parametrize(
    ("download", "key"),
    [
        ({"sourec": "demo"}, "download.sourec: unknown key"),
        ({"source": "flickr"}, "download.source: 'flickr' is not one of demo, folder, inat"),
        ({"demo": {"observations_rare": "three"}}, "download.demo.observations_rare: expected an"),
        ({"demo": {"broken_files": -1}}, "download.demo.broken_files: -1 is out of range"),
        ({"source": "folder"}, "download.folder: required when download.source is folder"),
        ({"source": "folder", "folder": "nowhere"}, "download.folder: nowhere does not exist"),
    ],
)
def test_bad_params_stop_with_one_line_naming_the_key(tmp_path, species_file, download, key):
    result = run_stage(tmp_path, download, species_file)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {key}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "raw").exists()  # validated before any work


def test_missing_species_file_stops_with_one_line(tmp_path):
    result = run_stage(tmp_path, {"source": "demo"}, tmp_path / "nowhere.yaml")
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'nowhere.yaml'}: no such file or directory\n"


def test_unknown_species_folder_stops_with_one_line(tmp_path, species_file):
    (tmp_path / "photos" / "Xenopeltis_unicolor").mkdir(parents=True)
    (tmp_path / "photos" / "Xenopeltis_unicolor" / "a.jpg").write_bytes(b"x")
    result = run_stage(tmp_path, {"source": "folder", "folder": "photos"}, species_file)
    assert result.returncode == 2
    assert result.stderr.startswith("error: download.folder: 1 folder name(s)")
    assert "Xenopeltis_unicolor" in result.stderr and "Traceback" not in result.stderr


def test_inat_resumes_its_own_download_and_replaces_another_source(tmp_path, species, monkeypatch):
    calls = []

    def fake_inat(cfg, species, out_dir, *, seed):
        calls.append((cfg, out_dir, seed))
        return []

    monkeypatch.setattr(sources, "download_inat", fake_inat)
    out = tmp_path / "raw"
    (out / "images" / "naja_kaouthia").mkdir(parents=True)
    (out / "images" / "naja_kaouthia" / "demo-000001.jpg").write_bytes(b"x")
    cfg = sources.DownloadConfig(source="inat")
    sources.run_download(cfg, species, out, seed=3)
    assert calls == [(cfg.inat, out, 3)]
    assert not (out / "images" / "naja_kaouthia").exists()  # the demo photo is gone

    (out / sources.STATE_DIR).mkdir()
    (out / "images" / "naja_kaouthia").mkdir(parents=True)
    (out / "images" / "naja_kaouthia" / "123.jpg").write_bytes(b"x")
    sources.run_download(cfg, species, out, seed=3)
    assert (out / "images" / "naja_kaouthia" / "123.jpg").exists()  # resumed, not wiped
