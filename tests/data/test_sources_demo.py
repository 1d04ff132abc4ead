"""The synthetic demo source: deterministic, imbalanced, and with faults for `verify` to find."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from snakeid.config import ParamsError, section
from snakeid.data.manifest import MANIFEST_COLUMNS, write_manifest
from snakeid.data.sources.common import species_slug
from snakeid.data.sources.demo import (
    ATTRIBUTION,
    LICENSE,
    LOOKS,
    SOURCE,
    DemoConfig,
    generate_demo,
    look_for,
    observation_counts,
)
from snakeid.taxa import Species, load_species

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def generate(monkeypatch):
    """Generate into `<where>/raw` given as a relative path, as DVC runs it from the repo root."""

    def run(where: Path, cfg: DemoConfig, species: list[Species], seed: int, **kw) -> list[dict]:
        where.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(where)
        rows = generate_demo(cfg, species, Path("raw"), seed=seed, **kw)
        write_manifest(Path("raw/manifest.csv"), rows)
        return rows

    return run


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files_and_manifest(tmp_path, species, tiny_demo, generate):
    generate(tmp_path / "a", tiny_demo, species, seed=3)
    generate(tmp_path / "b", tiny_demo, species, seed=3)
    a, b = _files(tmp_path / "a" / "raw"), _files(tmp_path / "b" / "raw")
    assert a == b
    assert "manifest.csv" in a and len(a) > 20


def test_other_seed_gives_other_photos(tmp_path, species, tiny_demo, generate):
    a = generate(tmp_path / "a", tiny_demo, species, seed=3)
    b = generate(tmp_path / "b", tiny_demo, species, seed=4)
    assert not {r["sha256"] for r in a if r["width"]} & {r["sha256"] for r in b if r["width"]}


def test_parallel_workers_give_the_same_photos(tmp_path, species, tiny_demo, generate):
    generate(tmp_path / "a", tiny_demo, species, seed=5, workers=1)
    generate(tmp_path / "b", tiny_demo, species, seed=5, workers=2)
    assert _files(tmp_path / "a" / "raw") == _files(tmp_path / "b" / "raw")


def test_every_species_has_observations_of_one_to_three_photos(tmp_path, species, generate):
    cfg = DemoConfig(
        observations_rare=3, observations_common=6, image_size=96, broken_files=0, duplicates=0
    )
    rows = generate(tmp_path, cfg, species, seed=1)
    photos = defaultdict(Counter)  # taxon -> observation -> photos
    for r in rows:
        photos[r["taxon"]][r["observation_id"]] += 1
    assert set(photos) == {s.name for s in species}
    for taxon, per_obs in photos.items():
        assert len(per_obs) >= 3, taxon
        assert all(1 <= n <= 3 for n in per_obs.values()), taxon
    # Observation ids never repeat across species.
    assert sum(len(p) for p in photos.values()) == len({r["observation_id"] for r in rows})


def test_photos_are_valid_jpegs_of_the_recorded_size(tmp_path, species, tiny_demo, generate):
    rows = generate(tmp_path, tiny_demo, species, seed=2)
    shapes = set()
    for r in (r for r in rows if r["width"]):
        with Image.open(tmp_path / r["path"]) as im:
            im.load()
            assert im.format == "JPEG" and im.size == (r["width"], r["height"])
        shapes.add("portrait" if r["height"] > r["width"] else "landscape")
        short = min(r["width"], r["height"])
        assert 0.85 * tiny_demo.image_size <= short <= 1.15 * tiny_demo.image_size
    assert shapes == {"portrait", "landscape"}


def test_manifest_has_the_contract_columns_and_synthetic_provenance(
    tmp_path, species, tiny_demo, generate
):
    rows = generate(tmp_path, tiny_demo, species, seed=2)
    with open(tmp_path / "raw" / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        written = list(reader)
    assert len(written) == len(rows)
    for r in written:
        assert (r["source"], r["license"], r["attribution"], r["url"]) == (
            SOURCE,
            LICENSE,
            ATTRIBUTION,
            "",
        )
        assert r["path"] == f"raw/images/{species_slug(r['taxon'])}/{r['photo_id']}.jpg"
        assert r["photo_id"].startswith("demo-") and r["observation_id"].startswith("demo-obs-")
        assert len(r["sha256"]) == 64 and r["split"] == ""
    assert len({r["photo_id"] for r in written}) == len(written)


def test_broken_files_and_duplicates_are_injected_and_listed(
    tmp_path, species, tiny_demo, generate
):
    rows = generate(tmp_path, tiny_demo, species, seed=6)
    broken = [r for r in rows if r["width"] == ""]
    assert len(broken) == tiny_demo.broken_files
    contents = sorted((tmp_path / r["path"]).read_bytes()[:4] for r in broken)
    assert contents[0] == b""  # the empty file
    assert b"<htm" in contents  # a text file with an image extension
    truncated = next(r for r in broken if (tmp_path / r["path"]).read_bytes()[:2] == b"\xff\xd8")
    with pytest.raises(OSError), Image.open(tmp_path / truncated["path"]) as im:
        im.load()

    first = {}
    duplicates = []
    for r in rows:
        if r["width"] and r["sha256"] in first:
            duplicates.append((first[r["sha256"]], r))
        first.setdefault(r["sha256"], r)
    assert len(duplicates) == tiny_demo.duplicates
    for original, copy in duplicates:
        assert copy["taxon"] == original["taxon"] and copy["photo_id"] != original["photo_id"]
        assert (tmp_path / copy["path"]).read_bytes() == (tmp_path / original["path"]).read_bytes()
    same_obs = {o["observation_id"] == c["observation_id"] for o, c in duplicates}
    assert same_obs == {True, False}  # one in the original's observation, one in another


def test_default_sizes_are_imbalanced_like_a_real_test_set():
    species = load_species(REPO / "data" / "taxa.yaml")
    counts = observation_counts(DemoConfig(), species)
    assert set(counts) == {s.name for s in species}
    assert min(counts.values()) == DemoConfig().observations_rare
    assert max(counts.values()) == DemoConfig().observations_common
    rare = [n for n in counts.values() if n <= 8]
    assert len(rare) >= 5 and 200 <= sum(counts.values()) <= 280  # ~2 photos each: ~500 photos


def test_every_default_species_has_a_hand_made_look():
    species = load_species(REPO / "data" / "taxa.yaml")
    assert all(look_for(s.name) is LOOKS[s.name.lower()] for s in species)


def test_other_species_get_a_stable_look_of_their_own():
    assert look_for("Daboia siamensis") == look_for("daboia_SIAMENSIS")
    assert look_for("Daboia siamensis") != look_for("Daboia russelii")


def test_config_is_validated():
    with pytest.raises(ParamsError, match="download.demo.observations_rare"):
        DemoConfig(observations_rare=9, observations_common=4)
    with pytest.raises(ParamsError, match=r"demo\.observations_rare"):
        section({"demo": {"observations_rare": 2}}, "demo", DemoConfig)
