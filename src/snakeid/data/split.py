"""The `split` stage: put every clean photo in train, val or test.

Rules, in order:

1. Photos of one observation (same `observation_id`; a photo without one is its own observation)
   always share a split, so near-identical shots of one snake never sit on both sides of an
   evaluation. An observation whose photos carry two species is an error.
2. A split set by the source (non-empty `split` column, e.g. a folder with train/val/test) is kept
   as is. It must be all-or-nothing per species, and one observation cannot have two.
3. Every other species is split on its own (stratified), deterministically from `base.seed`:
   its observations are sorted by id, shuffled with a generator seeded by (seed, a stable hash of
   the species name), then stably sorted largest first, so ties stay in shuffled order. Each
   observation in turn goes to the split whose photo count is furthest below its target
   (fraction x the species' photos); ties go to train, then test, then val. Largest-first makes
   the small observations, which fit any gap, come last, so the photo fractions come out close.
4. Few observations: every split with a non-zero fraction gets at least one observation when
   the species has at least that many. With fewer, the splits are filled in the order train,
   test, val: 1 observation -> train; 2 -> train, test; 3 -> one in each. Species that miss a
   split this way are listed in the metrics as `few_observation_species`.
5. Species listed in `unknown_species` are held out of the model entirely: every photo of theirs
   goes to `unknown.csv`, test photos of species the model never learns, on which `evaluate`
   measures how well the model says "not one of the species I know". The model's classes are
   the other species (`known_species`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snakeid.config import ParamsError, section, spec
from snakeid.data.manifest import CLEAN_COLUMNS, SPLITS, read_checked_manifest, write_manifest
from snakeid.errors import UserError
from snakeid.taxa import Species

_logger = logging.getLogger(__name__)

# The order in which splits are filled when a species has fewer observations than splits: a
# model needs training data first, and a test photo measures more than a val photo.
FILL_ORDER: tuple[str, ...] = ("train", "test", "val")


@dataclass(frozen=True)
class SplitConfig:
    train: float = field(default=0.70, metadata=spec(gt=0, le=1))
    val: float = field(default=0.15, metadata=spec(ge=0, le=1))
    test: float = field(default=0.15, metadata=spec(ge=0, le=1))
    # names from the species file: their photos are only ever test photos of an unknown species
    unknown_species: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ParamsError(f"split: train + val + test must sum to 1, got {total:.6g}")

    @property
    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


UNKNOWN = "unknown"  # the manifest `<split dir>/unknown.csv`: photos of the held-out species


@dataclass(frozen=True)
class SplitResult:
    splits: dict[str, list[dict[str, str]]]  # split -> clean manifest rows, `split` filled
    unknown: list[dict[str, str]]  # photos of `unknown_species` (split "test")
    metrics: dict[str, Any]


def model_species(
    params: Mapping[str, Any], species: Sequence[Species]
) -> tuple[list[Species], list[Species]]:
    """(the model's classes, the held-out species) as params.yaml's `split` section sets them:
    what every stage after `split` trains, evaluates or exports for."""
    return known_species(species, section(params, "split", SplitConfig).unknown_species)


def known_species(
    species: Sequence[Species], unknown: Sequence[str]
) -> tuple[list[Species], list[Species]]:
    """(the model's classes, the held-out species): the species file split by `unknown`, each
    in the file's order. Every name must be in the file, and holding species out must leave
    at least two known."""
    names = {s.name for s in species}
    missing = [u for u in unknown if u not in names]
    if missing:
        raise UserError(
            f"split.unknown_species: {missing[0]!r} is not in the species file (set "
            "split.unknown_species: [] to hold no species out)"
        )
    held = [s for s in species if s.name in set(unknown)]
    known = [s for s in species if s.name not in set(unknown)]
    if held and len(known) < 2:
        raise UserError(
            f"split.unknown_species holds out {len(held)} of {len(species)} species: a "
            "classifier needs at least 2 known ones"
        )
    return known, held


def observation_key(row: Mapping[str, str]) -> str:
    """Grouping key: the observation, or the photo itself when the source has no observation."""
    return f"obs:{row['observation_id']}" if row["observation_id"] else f"photo:{row['photo_id']}"


def allocate(
    sizes: Sequence[int], fractions: Mapping[str, float], rng: np.random.Generator
) -> list[str]:
    """Assign observations with `sizes` photos each to splits; returns each one's split.

    See the module docstring (rules 3 and 4) for the method.
    """
    k = len(sizes)
    active = [s for s in FILL_ORDER if fractions[s] > 0]
    allowed = active[: max(1, min(k, len(active)))]
    total_frac = sum(fractions[s] for s in allowed)
    targets = {s: fractions[s] / total_frac * sum(sizes) for s in allowed}
    photos = dict.fromkeys(allowed, 0)
    observations = dict.fromkeys(allowed, 0)

    order = sorted(rng.permutation(k).tolist(), key=lambda i: -sizes[i])  # stable: ties shuffled
    out = [""] * k
    for pos, i in enumerate(order):
        empty = [s for s in allowed if observations[s] == 0]
        # Keep enough observations back to give every allowed split one.
        candidates = empty if k - pos <= len(empty) else allowed
        best = max(candidates, key=lambda s: (targets[s] - photos[s], -FILL_ORDER.index(s)))
        out[i] = best
        photos[best] += sizes[i]
        observations[best] += 1
    return out


def _species_seed(seed: int, name: str) -> list[int]:
    # Python's hash() of a str changes per process; this one never does.
    return [seed & (2**64 - 1), int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")]


def _check(rows: Sequence[Mapping[str, str]], species: Sequence[Species]) -> None:
    known = {s.name for s in species}
    taxa_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["taxon"] not in known:
            raise UserError(
                f"photo {row['photo_id']}: taxon {row['taxon']!r} is not in the species file"
            )
        if row["split"] and row["split"] not in SPLITS:
            raise UserError(
                f"photo {row['photo_id']}: split {row['split']!r} is not one of {', '.join(SPLITS)}"
            )
        taxa_of[observation_key(row)].add(row["taxon"])
    for key, taxa in sorted(taxa_of.items()):
        if len(taxa) > 1:
            raise UserError(f"observation {key}: has photos of {' and '.join(sorted(taxa))}")


def _explicit(taxon: str, groups: Mapping[str, list[Mapping[str, str]]]) -> dict[str, str]:
    """The source's split for each observation of a species that has one."""
    out = {}
    for key, rows in groups.items():
        splits = sorted({r["split"] for r in rows})
        if len(splits) > 1:
            raise UserError(
                f"observation {key} ({taxon}): its photos are in {' and '.join(splits)}"
            )
        out[key] = splits[0]
    return out


def assign_splits(
    rows: Sequence[Mapping[str, str]],
    species: Sequence[Species],
    cfg: SplitConfig,
    seed: int,
) -> SplitResult:
    """Split clean manifest rows; output rows keep their input order within each split."""
    if not rows:
        raise UserError("the clean manifest has no photos to split")
    _check(rows, species)
    species, held = known_species(species, cfg.unknown_species)
    unknown = [dict(r) | {"split": "test"} for r in rows if r["taxon"] in cfg.unknown_species]
    rows = [r for r in rows if r["taxon"] not in cfg.unknown_species]
    by_species: dict[str, dict[str, list[Mapping[str, str]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for row in rows:
        by_species[row["taxon"]][observation_key(row)].append(row)

    split_of: dict[str, str] = {}  # observation key -> split
    explicit_species, few = [], {}
    for s in species:
        groups = by_species.get(s.name)
        if not groups:
            continue
        n_explicit = sum(1 for g in groups.values() for r in g if r["split"])
        n_photos = sum(len(g) for g in groups.values())
        if n_explicit == n_photos:
            split_of |= _explicit(s.name, groups)
            explicit_species.append(s.name)
            continue
        if n_explicit:
            raise UserError(
                f"{s.name}: {n_explicit} of {n_photos} photos have a split set by the source and "
                "the rest none; a source must set all or none of a species' splits"
            )
        keys = sorted(groups)
        rng = np.random.default_rng(_species_seed(seed, s.name))
        assigned = allocate([len(groups[k]) for k in keys], cfg.fractions, rng)
        split_of |= dict(zip(keys, assigned, strict=True))
        got = set(assigned)
        wanted = {x for x in SPLITS if cfg.fractions[x] > 0}
        if wanted - got:
            few[s.name] = {"observations": len(keys), "splits": [x for x in SPLITS if x in got]}

    splits: dict[str, list[dict[str, str]]] = {x: [] for x in SPLITS}
    for row in rows:
        x = split_of[observation_key(row)]
        splits[x].append(dict(row) | {"split": x})
    _check_nonempty(splits, cfg, explicit_species, len(by_species))
    metrics = _metrics(splits, species, cfg, few, explicit_species)
    metrics["photos"][UNKNOWN] = len(unknown)
    metrics["unknown_species"] = {s.name: sum(r["taxon"] == s.name for r in unknown) for s in held}
    _log_summary(metrics)
    return SplitResult(splits, unknown, metrics)


def _check_nonempty(
    splits: Mapping[str, list[dict[str, str]]],
    cfg: SplitConfig,
    explicit_species: Sequence[str],
    n_species: int,
) -> None:
    """Training needs train and val photos and evaluation test photos: an empty split stops
    the pipeline here, not after training."""
    empty = [x for x in SPLITS if not splits[x]]
    if not empty:
        return
    if len(explicit_species) == n_species:
        why = (
            "the source set the split of every photo; add a "
            f"{'/ and '.join(empty)}/ folder to it, or import a flat <species>/ folder and "
            "let split draw all three"
        )
    else:
        why = (
            f"fractions {cfg.fractions}, and a species with few observations fills train "
            f"first; add observations or raise {' and '.join(f'split.{x}' for x in empty)}"
        )
    raise UserError(f"no photo in the {' and '.join(empty)} split: {why}")


def _metrics(
    splits: Mapping[str, list[dict[str, str]]],
    species: Sequence[Species],
    cfg: SplitConfig,
    few: Mapping[str, Any],
    explicit_species: list[str],
) -> dict[str, Any]:
    total = sum(len(v) for v in splits.values())
    photos = Counter((r["taxon"], x) for x in SPLITS for r in splits[x])
    observations = Counter(
        r["taxon"] for r in {observation_key(r): r for x in SPLITS for r in splits[x]}.values()
    )
    per_species = {
        s.name: {x: photos[s.name, x] for x in SPLITS}
        | {"photos": sum(photos[s.name, x] for x in SPLITS), "observations": observations[s.name]}
        for s in species
    }
    return {
        "photos": {x: len(splits[x]) for x in SPLITS} | {"total": total},
        "observations": {x: len({observation_key(r) for r in splits[x]}) for x in SPLITS},
        "fractions": {
            "target": cfg.fractions,
            "achieved": {x: round(len(splits[x]) / total, 4) for x in SPLITS},
        },
        "per_species": per_species,
        "few_observation_species": dict(few),
        "explicit_species": explicit_species,
        "missing_species": [s for s, c in per_species.items() if c["photos"] == 0],
    }


def _log_summary(m: Mapping[str, Any]) -> None:
    _logger.info(
        "split %d photos: %s",
        m["photos"]["total"],
        ", ".join(
            f"{x} {m['photos'][x]} ({m['fractions']['achieved'][x]:.1%}, "
            f"{m['observations'][x]} observations)"
            for x in SPLITS
        ),
    )
    if m["few_observation_species"]:
        _logger.warning(
            "%d species have too few observations for every split: %s",
            len(m["few_observation_species"]),
            ", ".join(
                f"{s} ({v['observations']})" for s, v in m["few_observation_species"].items()
            ),
        )
    if m["unknown_species"]:
        _logger.info(
            "held out as unknown species (test photos only, in %s.csv): %s",
            UNKNOWN,
            ", ".join(f"{k} ({v} photos)" for k, v in m["unknown_species"].items()),
        )
    if m["missing_species"]:
        _logger.warning(
            "%d species of the species file have no photos: %s",
            len(m["missing_species"]),
            ", ".join(m["missing_species"]),
        )
    for x in SPLITS:
        if m["fractions"]["target"][x] > 0 and m["photos"][x] == 0:
            _logger.warning("split %s is empty", x)


def run(
    clean: str | Path, out: str | Path, species: Sequence[Species], cfg: SplitConfig, seed: int
) -> SplitResult:
    """Read `<clean>/manifest.csv`, split it, write `<out>/{train,val,test,unknown}.csv`."""
    rows = read_checked_manifest(Path(clean) / "manifest.csv", CLEAN_COLUMNS, what="clean manifest")
    result = assign_splits(rows, species, cfg, seed)
    for x, split_rows in result.splits.items():
        write_manifest(Path(out) / f"{x}.csv", split_rows, CLEAN_COLUMNS)
    write_manifest(Path(out) / f"{UNKNOWN}.csv", result.unknown, CLEAN_COLUMNS)
    return result
