"""split: grouped by observation, stratified by species, deterministic, source splits kept."""

from __future__ import annotations

import csv
import logging
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from snakeid.config import ParamsError, section
from snakeid.data.manifest import CLEAN_COLUMNS, SPLITS
from snakeid.data.split import SplitConfig, allocate, assign_splits, observation_key, run
from snakeid.errors import UserError
from snakeid.taxa import Species

SPECIES = [Species(f"Genus species{i}", f"Snake {i}", i % 2 == 0) for i in range(6)]
CFG = SplitConfig()


def clean_row(pid: str, taxon: str, obs: str, split: str = "") -> dict[str, str]:
    return dict.fromkeys(CLEAN_COLUMNS, "") | {
        "photo_id": pid,
        "observation_id": obs,
        "taxon": taxon,
        "path": f"data/clean/images/x/{pid}.jpg",
        "split": split,
    }


def synthetic(seed: int, min_obs: int = 1, max_obs: int = 30) -> list[dict[str, str]]:
    """Random manifest: min..max_obs observations per species, 1..5 photos each, some without id."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for s in SPECIES:
        for o in range(rng.randint(min_obs, max_obs)):
            obs = "" if rng.random() < 0.1 else f"{s.name[-1]}-{o}"
            for _ in range(1 if not obs else rng.randint(1, 5)):
                rows.append(clean_row(f"p{len(rows):05d}", s.name, obs))
    return rows


def split_of(result) -> dict[str, str]:
    return {r["photo_id"]: x for x, rows in result.splits.items() for r in rows}


@pytest.mark.parametrize("seed", range(8))
def test_no_observation_in_two_splits(seed: int) -> None:
    rows = synthetic(seed)
    result = assign_splits(rows, SPECIES, CFG, seed=seed)
    where = split_of(result)
    assert sorted(where) == sorted(r["photo_id"] for r in rows)  # every photo exactly once
    assert sum(len(v) for v in result.splits.values()) == len(rows)
    splits_of_obs = defaultdict(set)
    for r in rows:
        splits_of_obs[observation_key(r)].add(where[r["photo_id"]])
    assert all(len(s) == 1 for s in splits_of_obs.values())
    for x, split_rows in result.splits.items():
        assert all(r["split"] == x for r in split_rows)


def test_fractions_are_close_on_a_larger_manifest() -> None:
    rows = synthetic(0, min_obs=50, max_obs=400)
    result = assign_splits(rows, SPECIES, CFG, seed=1)
    achieved = result.metrics["fractions"]["achieved"]
    for x in SPLITS:
        assert abs(achieved[x] - CFG.fractions[x]) < 0.01, achieved
    for name, counts in result.metrics["per_species"].items():
        for x in SPLITS:  # stratified: each species on its own
            assert abs(counts[x] / counts["photos"] - CFG.fractions[x]) < 0.05, (name, counts)


def test_deterministic_and_independent_of_row_order() -> None:
    rows = synthetic(3)
    a = assign_splits(rows, SPECIES, CFG, seed=42)
    b = assign_splits(random.Random(1).sample(rows, len(rows)), SPECIES, CFG, seed=42)
    assert split_of(a) == split_of(b)
    assert a.metrics == b.metrics
    c = assign_splits(rows, SPECIES, CFG, seed=43)
    assert split_of(a) != split_of(c)


def test_output_rows_keep_input_order() -> None:
    rows = synthetic(4)
    result = assign_splits(rows, SPECIES, CFG, seed=0)
    position = {r["photo_id"]: i for i, r in enumerate(rows)}
    for split_rows in result.splits.values():
        idx = [position[r["photo_id"]] for r in split_rows]
        assert idx == sorted(idx)


def test_explicit_split_is_kept() -> None:
    a, b = SPECIES[0].name, SPECIES[1].name
    rows = [clean_row(f"a{i}", a, f"a{i}", "test" if i < 7 else "train") for i in range(10)]
    rows += [clean_row(f"b{i}", b, f"b{i}") for i in range(10)]
    result = assign_splits(rows, SPECIES, CFG, seed=0)
    where = split_of(result)
    assert [where[f"a{i}"] for i in range(10)] == ["test"] * 7 + ["train"] * 3
    assert result.metrics["explicit_species"] == [a]
    assert {where[f"b{i}"] for i in range(10)} == set(SPLITS)


def test_explicit_split_must_be_all_or_none_per_species() -> None:
    a = SPECIES[0].name
    rows = [clean_row("a1", a, "o1", "train"), clean_row("a2", a, "o2")]
    with pytest.raises(UserError, match=r"1 of 2 photos"):
        assign_splits(rows, SPECIES, CFG, seed=0)


def test_observation_with_two_explicit_splits_is_an_error() -> None:
    a = SPECIES[0].name
    rows = [clean_row("a1", a, "o1", "train"), clean_row("a2", a, "o1", "val")]
    with pytest.raises(UserError, match="observation obs:o1"):
        assign_splits(rows, SPECIES, CFG, seed=0)


def test_bad_rows_are_user_errors() -> None:
    a, b = SPECIES[0].name, SPECIES[1].name
    with pytest.raises(UserError, match="not one of"):
        assign_splits([clean_row("a1", a, "o1", "holdout")], SPECIES, CFG, seed=0)
    with pytest.raises(UserError, match="not in the species file"):
        assign_splits([clean_row("a1", "Naja naja", "o1")], SPECIES, CFG, seed=0)
    with pytest.raises(UserError, match="has photos of"):
        assign_splits([clean_row("a1", a, "o1"), clean_row("b1", b, "o1")], SPECIES, CFG, seed=0)
    with pytest.raises(UserError, match="no photos"):
        assign_splits([], SPECIES, CFG, seed=0)


@pytest.mark.parametrize("seed", range(5))
def test_few_observation_rule(seed: int) -> None:
    names = [s.name for s in SPECIES]
    rows = []
    for n_obs, name in zip((1, 2, 3, 4), names, strict=False):
        rows += [
            clean_row(f"{name[-1]}{o}-{p}", name, f"{name}-{o}")
            for o in range(n_obs)
            for p in range(o + 1)
        ]
    result = assign_splits(rows, SPECIES, CFG, seed=seed)
    per = result.metrics["per_species"]
    got = {name: {x for x in SPLITS if per[name][x]} for name in names[:4]}
    assert got == {
        names[0]: {"train"},
        names[1]: {"train", "test"},
        names[2]: {"train", "val", "test"},
        names[3]: {"train", "val", "test"},
    }
    assert result.metrics["few_observation_species"] == {
        names[0]: {"observations": 1, "splits": ["train"]},
        names[1]: {"observations": 2, "splits": ["train", "test"]},
    }


def test_few_observation_rule_skips_empty_fractions() -> None:
    assert sorted(
        allocate([3, 1], {"train": 0.8, "val": 0.2, "test": 0.0}, np.random.default_rng(0))
    ) == [
        "train",
        "val",
    ]
    assert (
        allocate([1, 1, 1], {"train": 1.0, "val": 0.0, "test": 0.0}, np.random.default_rng(0))
        == ["train"] * 3
    )


def test_largest_observation_goes_to_train() -> None:
    # 10 photos in one observation and one each in four: train takes the big one.
    out = allocate([10, 1, 1, 1, 1], CFG.fractions, np.random.default_rng(0))
    assert out[0] == "train" and set(out) == set(SPLITS)


def test_missing_species_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    rows = [clean_row(f"a{i}", SPECIES[0].name, f"o{i}") for i in range(5)]
    with caplog.at_level(logging.WARNING, logger="snakeid.data.split"):
        result = assign_splits(rows, SPECIES, CFG, seed=0)
    assert result.metrics["missing_species"] == [s.name for s in SPECIES[1:]]
    assert "have no photos" in caplog.text


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"train": 0.7, "val": 0.2, "test": 0.2}, r"split: train \+ val \+ test must sum to 1"),
        ({"train": 0.9, "val": -0.05, "test": 0.15}, r"split\.val: -0\.05 is out of range"),
        ({"train": 0.0, "val": 0.5, "test": 0.5}, r"split\.train"),
        ({"train": "most"}, r"split\.train: expected a number"),
        ({"tran": 0.7}, r"split\.tran: unknown key"),
    ],
)
def test_bad_params_name_the_key(raw: dict, match: str) -> None:
    with pytest.raises(ParamsError, match=match):
        section({"split": raw}, "split", SplitConfig)


def test_fractions_within_rounding_are_accepted() -> None:
    cfg = section({"split": {"train": 0.8, "val": 0.1, "test": 0.1}}, "split", SplitConfig)
    assert cfg.fractions == {"train": 0.8, "val": 0.1, "test": 0.1}


def test_run_writes_three_csvs(tmp_path: Path) -> None:
    rows = synthetic(5)
    clean = tmp_path / "clean"
    clean.mkdir()
    with open(clean / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CLEAN_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    result = run(clean, tmp_path / "split", SPECIES, CFG, seed=0)
    for x in SPLITS:
        with open(tmp_path / "split" / f"{x}.csv", newline="") as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames or ()) == CLEAN_COLUMNS
            written = list(reader)
        assert written == result.splits[x]
        assert len(written) == result.metrics["photos"][x]


def test_a_source_without_a_test_split_is_refused_before_training() -> None:
    """A folder with train/ and val/ but no test/: split stops and says what to add."""
    rows = [
        clean_row(f"{s.name[-1]}{i}", s.name, f"{s.name[-1]}{i}", "train" if i < 4 else "val")
        for s in SPECIES
        for i in range(6)
    ]
    with pytest.raises(UserError, match=r"no photo in the test split: .*add a test/ folder"):
        assign_splits(rows, SPECIES, CFG, seed=0)


def test_fractions_that_leave_a_split_empty_are_refused() -> None:
    rows = [clean_row(f"p{i}", SPECIES[0].name, f"o{i}") for i in range(10)]
    cfg = SplitConfig(train=0.85, val=0.15, test=0.0)
    with pytest.raises(UserError, match=r"no photo in the test split: .*raise split.test"):
        assign_splits(rows, SPECIES[:1], cfg, seed=0)


@pytest.mark.parametrize("seed", range(4))
def test_unknown_species_never_reach_train_or_val(seed: int, tmp_path: Path) -> None:
    rows = synthetic(seed, min_obs=3)
    # a source split on one held-out species must not smuggle it into train either
    held = [SPECIES[1].name, SPECIES[2].name]
    rows = [r | {"split": "train"} if r["taxon"] == held[1] else r for r in rows]
    rows = [r | {"split": r["split"] or "val"} if r["taxon"] == SPECIES[3].name else r
            for r in rows]  # fmt: skip
    clean = tmp_path / "clean"
    clean.mkdir()
    with open(clean / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, CLEAN_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    cfg = SplitConfig(train=0.6, val=0.2, test=0.2, unknown_species=tuple(held))
    result = run(clean, tmp_path / "split", SPECIES, cfg, seed)
    for x in SPLITS:
        with open(tmp_path / "split" / f"{x}.csv") as f:
            taxa = {r["taxon"] for r in csv.DictReader(f)}
        assert not taxa & set(held), x
    with open(tmp_path / "split" / "unknown.csv") as f:
        unknown = list(csv.DictReader(f))
    assert sorted(r["photo_id"] for r in unknown) == sorted(
        r["photo_id"] for r in rows if r["taxon"] in held
    )  # every photo of theirs, and only there
    assert {r["split"] for r in unknown} == {"test"}
    assert result.metrics["photos"]["unknown"] == len(unknown)
    assert set(result.metrics["unknown_species"]) == set(held)
    assert set(result.metrics["per_species"]) == {s.name for s in SPECIES} - set(held)


def test_unknown_species_must_be_in_the_species_file() -> None:
    rows = [clean_row(f"p{i}", SPECIES[i % 3].name, f"o{i}") for i in range(30)]
    cfg = SplitConfig(unknown_species=("Naja nonexistens",))
    with pytest.raises(UserError, match=r"'Naja nonexistens' is not in the species file"):
        assign_splits(rows, SPECIES, cfg, seed=0)
    everything_but_one = tuple(s.name for s in SPECIES[1:])
    with pytest.raises(UserError, match="at least 2 known"):
        assign_splits(rows, SPECIES, SplitConfig(unknown_species=everything_but_one), seed=0)
    with pytest.raises(ParamsError, match="split.unknown_species: expected a list"):
        section({"split": {"unknown_species": "Genus species1"}}, "split", SplitConfig)
