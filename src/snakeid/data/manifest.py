"""The photo manifest: one CSV schema written by every source and carried through the DAG.

Paths are stored as the stage wrote them, relative to the repository root (the directory DVC
runs stages in), e.g. `data/raw/images/naja_kaouthia/000123.jpg`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from snakeid.errors import UserError

# The contract every source writes (issue: foundation). Sources fill what they know and leave the
# rest empty; `split` is set only when the source fixes it (a folder with train/val/test).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "photo_id",
    "observation_id",
    "taxon",  # scientific name exactly as in the species file
    "path",
    "source",  # demo-synthetic | folder | inat
    "license",
    "attribution",
    "url",
    "width",
    "height",
    "sha256",
    "split",
    # iNaturalist provenance (empty for other sources)
    "user_login",
    "observed_on",
    "latitude",
    "longitude",
    "place_ids",
)

# `verify` adds where each kept image came from.
CLEAN_COLUMNS: tuple[str, ...] = MANIFEST_COLUMNS + ("raw_path", "raw_sha256")

SPLITS: tuple[str, ...] = ("train", "val", "test")


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_manifest(
    path: str | Path,
    rows: Iterable[Mapping[str, Any]],
    columns: tuple[str, ...] = MANIFEST_COLUMNS,
) -> None:
    """Write rows with exactly `columns` (missing values empty; unknown keys are a bug)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {c: "" if row.get(c) is None else row.get(c) for c in columns}
                | {k: v for k, v in row.items() if k not in columns}
            )
    tmp.replace(path)  # never leave a half-written manifest behind


def read_checked_manifest(
    path: str | Path, columns: Sequence[str], *, what: str
) -> list[dict[str, str]]:
    """Read a manifest CSV, failing with a `UserError` if it is missing or has other columns."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        extra = [c for c in header if c not in columns]
        if missing:
            raise UserError(f"{path}: {what} lacks column(s) {', '.join(missing)}")
        if extra:
            raise UserError(f"{path}: {what} has unexpected column(s) {', '.join(extra)}")
        rows = list(reader)
    for i, row in enumerate(rows):
        if None in row or any(v is None for v in row.values()):
            raise UserError(f"{path}: line {i + 2} does not have {len(columns)} fields")
    return rows
