"""The `verify` stage: decode every raw photo, drop the bad ones with a reason, normalise the rest.

What is dropped, checked in this order (the first that applies is the photo's reason):

    missing                       in the manifest, not on disk
    unreadable                    zero bytes, not an image, truncated or corrupt (a full decode
                                  with `im.load()`; Pillow's LOAD_TRUNCATED_IMAGES stays off)
    decompression_bomb            more than `max_pixels` pixels, rejected from the header before
                                  any pixel is decoded
    too_small                     shorter side below `min_side`
    duplicate                     same pixels (after EXIF rotation and RGB conversion) as a kept
                                  photo of the same species: byte copies and lossless re-encodes
    cross_species_duplicate       the same, but the kept photo is labelled as another species
    near_duplicate                perceptual hash (pHash, 64 bits) within `near_dup_distance`
                                  bits of a kept photo of the same species (resized, re-compressed,
                                  slightly brightened copies)
    cross_species_near_duplicate  the same, but only photos of other species are that close

Photos are considered in `photo_id` order and the first one is kept, so the result does not
depend on the row order of the raw manifest (for iNaturalist ids, the older upload wins).
The two cross-species reasons are label noise: both photos are listed in `label_conflicts` so a
person can decide which label is right; the later one is dropped so it cannot teach the model a
wrong label.

Kept photos are normalised once, here, so every later stage reads plain RGB JPEGs: EXIF orientation
applied, converted to RGB (`to_rgb`), shorter side downscaled to `resize_shorter` (never
upscaled), metadata stripped. One photo's decode, checks and clean copy are in
`snakeid.data.photo_check` (what the worker processes run); this module orders the photos,
finds the repeats and accounts for every one.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from snakeid.config import spec
from snakeid.data.manifest import (
    CLEAN_COLUMNS,
    MANIFEST_COLUMNS,
    read_checked_manifest,
    write_manifest,
)
from snakeid.data.photo_check import Inspected, Job, inspect_photo
from snakeid.errors import UserError
from snakeid.images import DEFAULT_MAX_PIXELS
from snakeid.taxa import Species, label_index, species_slug
from snakeid.utils import Progress

_logger = logging.getLogger(__name__)

REASONS: tuple[str, ...] = (
    "missing",
    "unreadable",
    "decompression_bomb",
    "too_small",
    "duplicate",
    "cross_species_duplicate",
    "near_duplicate",
    "cross_species_near_duplicate",
)
DROPPED_COLUMNS: tuple[str, ...] = ("photo_id", "path", "taxon", "reason", "detail")

# photo_id becomes a file name under <clean>/images/, so it must be a safe one.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HASH_BITS = 64  # pHash with hash_size=8


@dataclass(frozen=True)
class VerifyConfig:
    min_side: int = field(default=64, metadata=spec(ge=1))
    resize_shorter: int = field(default=320, metadata=spec(ge=32, le=4096))
    near_dup_distance: int = field(default=4, metadata=spec(ge=0, le=_HASH_BITS // 2))
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata=spec(ge=1))
    jpeg_quality: int = field(default=90, metadata=spec(ge=50, le=100))
    workers: int = field(default=2, metadata=spec(ge=1, le=64))  # decode processes


@dataclass(frozen=True)
class VerifyResult:
    kept: list[dict[str, str]]  # clean manifest rows (CLEAN_COLUMNS)
    dropped: list[dict[str, str]]  # DROPPED_COLUMNS
    metrics: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Reading the raw manifest


def _check_rows(rows: Sequence[Mapping[str, str]], species: Sequence[Species], where: str) -> None:
    known = {s.name for s in species}
    ids: set[str] = set()
    for i, row in enumerate(rows):
        pid = row["photo_id"]
        if not _SAFE_ID.fullmatch(pid):
            raise UserError(
                f"{where}: line {i + 2}: photo_id {pid!r} is empty or not a safe file name"
            )
        if pid in ids:
            raise UserError(f"{where}: photo_id {pid!r} appears twice")
        ids.add(pid)
        if row["taxon"] not in known:
            raise UserError(
                f"{where}: line {i + 2}: taxon {row['taxon']!r} is not in the species file"
            )


# ---------------------------------------------------------------------------------------------
# The stage


def _prepare_out(out: Path) -> None:
    """Start from an empty `out`, but only ever delete what a previous run of this stage wrote."""
    if out.exists():
        stray = sorted(p.name for p in out.iterdir() if p.name not in ("images", "manifest.csv"))
        if stray:
            raise UserError(f"{out}: exists and holds files verify did not write ({stray[0]}, ...)")
        shutil.rmtree(out / "images", ignore_errors=True)
        (out / "manifest.csv").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _inspect_all(jobs: list[Job], cfg: VerifyConfig) -> list[Inspected]:
    work = partial(
        inspect_photo,
        max_pixels=cfg.max_pixels,
        min_side=cfg.min_side,
        resize_shorter=cfg.resize_shorter,
        jpeg_quality=cfg.jpeg_quality,
    )
    with Progress(len(jobs), "verify", "img") as progress:
        if cfg.workers == 1 or len(jobs) < 2 * cfg.workers:
            results = []
            for job in jobs:
                results.append(work(job))
                progress.update()
            return results
        # spawn, not fork: forking a process that already runs threads (tqdm's monitor) can hang.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(cfg.workers, mp_context=spawn) as pool:
            results = []
            for r in pool.map(work, jobs, chunksize=8):  # map keeps input order
                results.append(r)
                progress.update()
            return results


class _KeptIndex:
    """The photos kept so far, searchable by exact pixels and by pHash distance."""

    def __init__(self, capacity: int, near_dup_distance: int):
        self.near = near_dup_distance
        self.by_pixels: dict[str, tuple[int, int]] = {}  # pixel hash -> (photo index, taxon)
        self.index: list[int] = []
        # Filled in place; Hamming distance = popcount(xor), vectorised over all kept photos.
        self.phash = np.zeros(capacity, dtype=np.uint64)
        self.taxon = np.zeros(capacity, dtype=np.int32)

    def match(self, res: Inspected, taxon: int) -> tuple[str, int, int] | None:
        """(reason, index of the kept photo, distance) if `res` repeats a kept photo."""
        if res.pixel_hash in self.by_pixels:
            j, t = self.by_pixels[res.pixel_hash]
            return ("duplicate" if t == taxon else "cross_species_duplicate"), j, 0
        k = len(self.index)
        dist = np.bitwise_count(self.phash[:k] ^ np.uint64(res.phash))  # (k,)
        close = dist <= self.near
        if not close.any():
            return None
        # A close photo of the same species makes an ordinary near-duplicate, even if a photo of
        # another species is close too; only otherwise is it a label conflict.
        same = close & (self.taxon[:k] == taxon)
        pick = same if same.any() else close
        m = int(np.flatnonzero(pick)[np.argmin(dist[pick])])
        reason = "near_duplicate" if same.any() else "cross_species_near_duplicate"
        return reason, self.index[m], int(dist[m])

    def add(self, i: int, res: Inspected, taxon: int) -> None:
        k = len(self.index)
        self.phash[k], self.taxon[k] = res.phash, taxon
        self.by_pixels[res.pixel_hash] = (i, taxon)
        self.index.append(i)


def verify_photos(
    rows: Sequence[Mapping[str, str]],
    species: Sequence[Species],
    cfg: VerifyConfig,
    out: str | Path,
) -> VerifyResult:
    """Check every photo of a raw manifest; write clean copies under `<out>/images/`.

    Raw paths are read as given (relative to the working directory, like the manifest's). Writes
    only images; the caller writes the clean manifest, metrics and dropped list from the result.
    """
    out = Path(out)
    _check_rows(rows, species, "raw manifest")
    _prepare_out(out)
    rows = sorted(rows, key=lambda r: r["photo_id"])  # "first" is by id, not by row order
    dst = [
        (out / "images" / species_slug(r["taxon"]) / f"{r['photo_id']}.jpg").as_posix()
        for r in rows
    ]
    jobs = [Job(r["path"], d) for r, d in zip(rows, dst, strict=True)]
    inspected = _inspect_all(jobs, cfg)

    taxon_index = label_index(species)
    index = _KeptIndex(len(rows), cfg.near_dup_distance)
    kept: list[dict[str, str]] = []
    dropped: list[dict[str, str]] = []
    conflicts: list[dict[str, Any]] = []
    for i, (r, res) in enumerate(zip(rows, inspected, strict=True)):
        reason, detail = res.reason, res.detail
        if not reason and (hit := index.match(res, taxon_index[r["taxon"]])):
            reason, j, dist = hit
            detail, conflict = _describe_repeat(reason, dist, row=r, kept_row=rows[j])
            if conflict is not None:
                conflicts.append(conflict)
            Path(dst[i]).unlink()  # its clean copy was written before we knew
        if reason:
            dropped.append({c: r[c] for c in ("photo_id", "path", "taxon")})
            dropped[-1].update(reason=reason, detail=detail)
            continue
        index.add(i, res, taxon_index[r["taxon"]])
        kept.append(
            {c: r[c] for c in MANIFEST_COLUMNS}
            | {"path": dst[i], "width": str(res.width), "height": str(res.height)}
            | {"sha256": res.sha256, "raw_path": r["path"], "raw_sha256": r["sha256"]}
        )

    metrics = _metrics(rows, species, kept, dropped, conflicts)
    _log_summary(metrics)
    return VerifyResult(kept, dropped, metrics)


def _describe_repeat(
    reason: str, dist: int, *, row: Mapping[str, str], kept_row: Mapping[str, str]
) -> tuple[str, dict[str, Any] | None]:
    """Detail for the dropped list (`row` repeats `kept_row`) and the label conflict, if any."""
    detail = f"{reason.replace('_', ' ')} of {kept_row['photo_id']}"
    conflict: dict[str, Any] | None = None
    if reason.startswith("cross_species"):
        detail += f" ({kept_row['taxon']})"
        conflict = {
            "kind": reason.removeprefix("cross_species_"),
            "distance": dist,
            "kept": kept_row["photo_id"],
            "kept_taxon": kept_row["taxon"],
            "dropped": row["photo_id"],
            "dropped_taxon": row["taxon"],
        }
    if reason.endswith("near_duplicate"):
        detail += f", pHash distance {dist}"
    return detail, conflict


def _metrics(
    rows: Sequence[Mapping[str, str]],
    species: Sequence[Species],
    kept: list[dict[str, str]],
    dropped: list[dict[str, str]],
    conflicts: list[dict[str, Any]],
) -> dict[str, Any]:
    # Every input photo must be accounted for exactly once; anything else is a bug here.
    kept_ids, dropped_ids = {r["photo_id"] for r in kept}, {r["photo_id"] for r in dropped}
    if kept_ids & dropped_ids or kept_ids | dropped_ids != {r["photo_id"] for r in rows}:
        raise AssertionError("verify: kept and dropped photos do not partition the manifest")
    if len(kept) + len(dropped) != len(rows):
        raise AssertionError(
            f"verify: kept {len(kept)} + dropped {len(dropped)} != seen {len(rows)}"
        )

    def block(seen: int, n_kept: int, reasons: Counter[str]) -> dict[str, Any]:
        return {
            "seen": seen,
            "kept": n_kept,
            "dropped": seen - n_kept,
            "dropped_by_reason": {reason: reasons[reason] for reason in REASONS},
        }

    seen_by = Counter(r["taxon"] for r in rows)
    kept_by = Counter(r["taxon"] for r in kept)
    return block(len(rows), len(kept), Counter(r["reason"] for r in dropped)) | {
        # Every species of the species file is listed, photos or not, so diffs line up.
        "per_species": {
            s.name: block(
                seen_by[s.name],
                kept_by[s.name],
                Counter(r["reason"] for r in dropped if r["taxon"] == s.name),
            )
            for s in species
        },
        "label_conflicts": {"count": len(conflicts), "pairs": conflicts},
    }


def _log_summary(m: Mapping[str, Any]) -> None:
    reasons = ", ".join(f"{k} {v}" for k, v in m["dropped_by_reason"].items() if v)
    _logger.info(
        "kept %d of %d photos; dropped %d (%s)",
        m["kept"],
        m["seen"],
        m["dropped"],
        reasons or "none",
    )
    for c in m["label_conflicts"]["pairs"]:
        _logger.warning(
            "label conflict: %s (%s) and %s (%s) look the same (pHash distance %d); dropped %s",
            c["kept"],
            c["kept_taxon"],
            c["dropped"],
            c["dropped_taxon"],
            c["distance"],
            c["dropped"],
        )
    empty = [s for s, b in m["per_species"].items() if b["kept"] == 0]
    if empty:
        _logger.warning("no photos kept for %d species: %s", len(empty), ", ".join(empty))


def run(
    raw: str | Path,
    out: str | Path,
    species: Sequence[Species],
    cfg: VerifyConfig,
) -> VerifyResult:
    """Read `<raw>/manifest.csv`, verify it, write `<out>/images/` and `<out>/manifest.csv`."""
    rows = read_checked_manifest(Path(raw) / "manifest.csv", MANIFEST_COLUMNS, what="raw manifest")
    result = verify_photos(rows, species, cfg, out)
    write_manifest(Path(out) / "manifest.csv", result.kept, CLEAN_COLUMNS)
    return result
