"""The folder source: layouts, name matching, observations, skipped files and clear errors."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snakeid.config import ParamsError, section
from snakeid.data.manifest import MANIFEST_COLUMNS
from snakeid.data.sources import DownloadConfig, run_download
from snakeid.data.sources.folder import import_folder, scan_folder
from snakeid.errors import UserError


def photo(path: Path, seed: int = 0, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)
    return path


def download(root: Path, out: Path, species) -> list[dict]:
    return run_download(DownloadConfig(source="folder", folder=str(root)), species, out, seed=0)


def test_flat_layout_copies_bytes_and_leaves_the_split_open(tmp_path, species):
    root = tmp_path / "photos"
    a = photo(root / "Naja_kaouthia" / "a.jpg", 1)
    photo(root / "Naja_kaouthia" / "b.PNG", 2, "PNG")
    photo(root / "Bungarus fasciatus" / "c.jpeg", 3)
    rows = download(root, tmp_path / "raw", species)

    assert Counter(r["taxon"] for r in rows) == {"Naja kaouthia": 2, "Bungarus fasciatus": 1}
    row = next(r for r in rows if r["url"].endswith("/a.jpg"))
    assert Path(row["path"]).read_bytes() == a.read_bytes()
    assert Path(row["path"]).parent == tmp_path / "raw" / "images" / "naja_kaouthia"
    assert row["url"] == a.resolve().as_posix()
    assert (row["source"], row["split"], row["width"], row["height"]) == ("folder", "", 32, 24)
    assert any(r["path"].endswith(".png") for r in rows)  # extension kept, lower-cased
    assert len({r["photo_id"] for r in rows}) == len({r["observation_id"] for r in rows}) == 3
    with open(tmp_path / "raw" / "manifest.csv", newline="") as f:
        assert tuple(csv.DictReader(f).fieldnames or ()) == MANIFEST_COLUMNS


def test_split_layout_keeps_the_split(tmp_path, species):
    root = tmp_path / "photos"
    photo(root / "train" / "Naja_kaouthia" / "a.jpg", 1)
    photo(root / "Val" / "Naja_kaouthia" / "b.jpg", 2)
    photo(root / "test" / "Bungarus_fasciatus" / "c.jpg", 3)
    (root / "species.yaml").write_text("- name: x\n")  # a file beside the split folders
    scan = scan_folder(root, species)
    assert scan.has_splits
    assert {(p.rel, p.split) for p in scan.photos} == {
        ("train/Naja_kaouthia/a.jpg", "train"),
        ("Val/Naja_kaouthia/b.jpg", "val"),
        ("test/Bungarus_fasciatus/c.jpg", "test"),
    }
    assert [(s.path, s.reason) for s in scan.skipped] == [
        ("species.yaml", "outside a species folder")
    ]


def test_folder_names_match_with_spaces_or_underscores_in_any_case(tmp_path, species):
    root = tmp_path / "photos"
    photo(root / "NAJA_kaouthia" / "a.jpg")
    photo(root / "naja  Kaouthia" / "b.jpg")
    photo(root / "daboia_siamensis" / "c.jpg")
    scan = scan_folder(root, species)
    assert sorted(p.taxon for p in scan.photos) == [
        "Daboia siamensis",
        "Naja kaouthia",
        "Naja kaouthia",
    ]


def test_unknown_folder_names_are_one_error_listing_them_and_the_known_ones(tmp_path, species):
    root = tmp_path / "photos"
    photo(root / "train" / "Naja_kaouthia" / "a.jpg")
    photo(root / "train" / "Xenopeltis_unicolor" / "a.jpg")
    photo(root / "val" / "Xenopeltis_unicolor" / "a.jpg")
    photo(root / "val" / "cobra" / "a.jpg")
    with pytest.raises(UserError) as e:
        scan_folder(root, species)
    msg = str(e.value)
    assert "2 folder name(s)" in msg
    assert "Xenopeltis_unicolor (in train/, val/)" in msg and "cobra (in val/)" in msg
    assert "Known species: Naja kaouthia, Bungarus fasciatus, Daboia siamensis" in msg


def test_non_images_and_hidden_files_are_skipped_and_listed(tmp_path, species):
    root = tmp_path / "photos"
    photo(root / "Naja_kaouthia" / "a.jpg")
    (root / "Naja_kaouthia" / "notes.txt").write_text("seen at the river")
    (root / "Naja_kaouthia" / "README").write_text("x")
    (root / "Naja_kaouthia" / ".DS_Store").write_bytes(b"\0")
    photo(root / "Naja_kaouthia" / ".thumbs" / "t.jpg")
    out = tmp_path / "raw"
    rows = download(root, out, species)
    assert len(rows) == 1
    with open(out / "skipped.csv", newline="") as f:
        skipped = {r["path"]: r["reason"] for r in csv.DictReader(f)}
    assert skipped == {
        "Naja_kaouthia/.DS_Store": "hidden",
        "Naja_kaouthia/.thumbs": "hidden",
        "Naja_kaouthia/README": "not an image (no extension)",
        "Naja_kaouthia/notes.txt": "not an image (.txt)",
    }


def test_nested_folders_are_searched_and_broken_images_copied_as_they_are(tmp_path, species):
    root = tmp_path / "photos"
    photo(root / "Naja_kaouthia" / "2023" / "march" / "a.jpg")
    photo(root / "Naja_kaouthia" / "2024" / "a.jpg", 2)  # same name, other folder
    (root / "Naja_kaouthia" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    rows = import_folder(scan_folder(root, species), tmp_path / "raw")
    assert len(rows) == 3 and len({r["path"] for r in rows}) == 3
    broken = next(r for r in rows if r["url"].endswith("broken.jpg"))
    assert Path(broken["path"]).read_bytes() == b"\xff\xd8 not really"
    assert broken["width"] == broken["height"] == ""


def test_obs_prefix_groups_photos_into_one_observation_per_species(tmp_path, species):
    root = tmp_path / "photos"
    photo(root / "Naja_kaouthia" / "obs-17__head.jpg")
    photo(root / "Naja_kaouthia" / "sub" / "OBS-17__tail.jpg")
    photo(root / "Naja_kaouthia" / "obs-18__a.jpg")
    photo(root / "Naja_kaouthia" / "obs17_no_marker.jpg")
    photo(root / "Bungarus_fasciatus" / "obs-17__x.jpg")
    rows = import_folder(scan_folder(root, species), tmp_path / "raw")
    obs = {r["url"].rsplit("/", 1)[1]: r["observation_id"] for r in rows}
    assert obs["obs-17__head.jpg"] == obs["OBS-17__tail.jpg"] == "folder-obs-naja_kaouthia-17"
    assert len(set(obs.values())) == 4  # 17 of the krait is another animal


def test_one_observation_in_two_splits_is_an_error(tmp_path, species):
    root = tmp_path / "photos"
    photo(root / "train" / "Naja_kaouthia" / "obs-3__a.jpg")
    photo(root / "val" / "Naja_kaouthia" / "obs-3__b.jpg")
    with pytest.raises(UserError, match=r"obs-3__ of Naja kaouthia has photos in train/ and val/"):
        scan_folder(root, species)


def test_mixed_layout_is_an_error(tmp_path, species):
    root = tmp_path / "photos"
    photo(root / "train" / "Naja_kaouthia" / "a.jpg")
    photo(root / "Bungarus_fasciatus" / "b.jpg")
    with pytest.raises(UserError, match=r"mixes split folders \(train/\) with other folders"):
        scan_folder(root, species)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "is empty"),
        (lambda root: (root / "Naja_kaouthia").mkdir(parents=True), "no images under"),
    ],
)
def test_missing_empty_or_imageless_folder_is_an_error(tmp_path, species, make, message):
    root = tmp_path / "photos"
    make(root)
    with pytest.raises(UserError, match=message):
        scan_folder(root, species)


def test_a_bad_folder_leaves_the_previous_download_alone(tmp_path, species):
    root = tmp_path / "photos"
    photo(root / "Naja_kaouthia" / "a.jpg")
    out = tmp_path / "raw"
    download(root, out, species)
    photo(root / "Unknown_species" / "a.jpg")
    with pytest.raises(UserError):
        download(root, out, species)
    assert (out / "manifest.csv").is_file()


def test_rerun_replaces_the_previous_download_but_never_other_files(tmp_path, species):
    root = tmp_path / "photos"
    photo(root / "Naja_kaouthia" / "a.jpg")
    photo(root / "Naja_kaouthia" / "b.jpg", 1)
    out = tmp_path / "raw"
    download(root, out, species)
    (root / "Naja_kaouthia" / "b.jpg").unlink()
    rows = download(root, out, species)
    assert len(rows) == 1 and len(list((out / "images").rglob("*.jpg"))) == 1

    (out / "my_notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="did not write"):
        download(root, out, species)
    assert (out / "my_notes.txt").exists()


def test_source_folder_requires_the_folder_key():
    with pytest.raises(ParamsError, match="download.folder: required"):
        section({"download": {"source": "folder"}}, "download", DownloadConfig)
