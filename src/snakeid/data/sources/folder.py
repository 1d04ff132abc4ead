"""The `folder` source: import your own photos from a folder with one sub-folder per species.

Two layouts, one per folder (mixing them is an error):

    <root>/<species>/...                      the `split` stage assigns train/val/test
    <root>/{train,val,test}/<species>/...     your split is kept (the manifest's `split`)

A species folder is named by the scientific name in the species file, with spaces or
underscores, in any case (`Naja_kaouthia`, `naja kaouthia`). Folders inside a species folder are
searched too. Files ending in .jpg .jpeg .png .webp .bmp .tif .tiff .gif (any case) are copied
byte for byte, broken ones included: `verify` decides what to keep. Other files, hidden files
and files outside a species folder are skipped and listed in `<out>/skipped.csv`.

Observations: each photo is its own observation, unless its file name starts with
`obs-<id>__` (for example `obs-17__head.jpg` and `obs-17__tail.jpg`): photos of one species whose
names carry the same `<id>` (letters, digits, `.` and `-`) are one observation, one animal seen
once, and always land in the same split. With split folders they must all be in the same one.

Photo ids are `folder-` plus 12 hex digits of a hash of the photo's path below the root, so
adding photos does not rename the others.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snakeid.data.manifest import SPLITS
from snakeid.data.sources.common import image_dims, species_dir, species_slug
from snakeid.errors import UserError
from snakeid.taxa import Species, index_by_name, normalise_name
from snakeid.utils import sha256_file

_logger = logging.getLogger(__name__)

SOURCE = "folder"
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
OBSERVATION_PATTERN = re.compile(r"obs-([A-Za-z0-9][A-Za-z0-9.-]*)__", re.IGNORECASE)


@dataclass(frozen=True)
class FolderPhoto:
    source: Path  # the user's file
    rel: str  # its path below the root, with '/'
    taxon: str  # the name in the species file
    split: str  # train | val | test, or "" when the folder has no split folders
    observation: str | None  # the <id> of an `obs-<id>__` file name


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class FolderScan:
    """What `scan_folder` found; nothing has been copied yet."""

    root: Path
    has_splits: bool
    photos: list[FolderPhoto]
    skipped: list[Skipped]


def scan_folder(root: Path, species: list[Species]) -> FolderScan:
    """Find the photos under `root` and check the layout; raises `UserError` on any problem.

    Reads only, so a bad folder stops the stage before the old download is removed.
    """
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise UserError(f"download.folder: {root} {what}")
    skipped: list[Skipped] = []
    top = _visible(root, root, skipped)
    if not top:
        raise UserError(f"download.folder: {root} is empty")
    splits = [d for d in top if d.name.lower() in SPLITS]
    others = [d for d in top if d not in splits]
    if splits and others:
        raise UserError(
            f"download.folder: {root} mixes split folders ({_names(splits)}) with other folders "
            f"({_names(others)}); put every species folder inside train/, val/ or test/, "
            "or use no split folders at all"
        )
    found = _species_folders(root, top, splits=splits, species=species, skipped=skipped)
    photos = _photos_in(found, root=root, skipped=skipped)
    if not photos:
        raise UserError(
            f"download.folder: no images under {root} "
            f"(looked for {' '.join(sorted(IMAGE_EXTENSIONS))} in species folders)"
        )
    _check_observation_splits(photos)
    photos.sort(key=lambda p: p.rel)
    skipped.sort(key=lambda s: s.path)
    return FolderScan(root, bool(splits), photos, skipped)


def import_folder(scan: FolderScan, out_dir: Path) -> list[dict[str, Any]]:
    """Copy the scanned photos to `out_dir/images/<species>/` and return their manifest rows."""
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    for photo in scan.photos:
        digest = hashlib.sha256(photo.rel.encode()).hexdigest()[:12]
        photo_id = f"folder-{digest}"
        if photo_id in used:  # 48 bits: never in practice, but a silent overwrite would be worse
            raise RuntimeError(f"photo id collision for {photo.rel}")
        used.add(photo_id)
        folder = species_dir(out_dir, photo.taxon)
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{photo_id}{photo.source.suffix.lower()}"
        shutil.copyfile(photo.source, dest)
        if photo.observation is None:
            obs_id = f"folder-obs-{digest}"
        else:
            obs_id = f"folder-obs-{species_slug(photo.taxon)}-{photo.observation}"
        size = image_dims(dest)
        rows.append(
            {
                "photo_id": photo_id,
                "observation_id": obs_id,
                "taxon": photo.taxon,
                "path": dest.as_posix(),
                "source": SOURCE,
                "url": photo.source.resolve().as_posix(),
                "width": size[0] if size else "",
                "height": size[1] if size else "",
                "sha256": sha256_file(dest),
                "split": photo.split,
            }
        )
    by_split = Counter(p.split or "unsplit" for p in scan.photos)
    _logger.info(
        "folder %s: %d photos (%s), %d files skipped",
        scan.root,
        len(rows),
        ", ".join(f"{k} {v}" for k, v in sorted(by_split.items())),
        len(scan.skipped),
    )
    for reason, n in sorted(Counter(s.reason for s in scan.skipped).items()):
        _logger.info("  skipped %d: %s", n, reason)
    return rows


def _species_folders(
    root: Path,
    top: list[Path],
    *,
    splits: list[Path],
    species: list[Species],
    skipped: list[Skipped],
) -> list[tuple[str, Species, Path]]:
    """(split, species, folder) of every species folder, in order; every unknown name is an error.

    `top` are the visible folders of `root`; with `splits`, the species folders are inside those.
    """
    parents = [(d.name.lower(), d) for d in splits] if splits else [("", root)]

    index = index_by_name(species)
    unknown: dict[str, list[str]] = {}
    found: list[tuple[str, Species, Path]] = []
    for split, parent in parents:
        folders = top if parent == root else _visible(parent, root, skipped)
        for d in folders:
            sp = index.get(normalise_name(d.name))
            if sp is None:
                unknown.setdefault(d.name, []).append(f"{split}/" if split else "")
            else:
                found.append((split, sp, d))
    if unknown:
        names = ", ".join(
            f"{name} (in {', '.join(where)})" if splits else name
            for name, where in sorted(unknown.items())
        )
        raise UserError(
            f"download.folder: {len(unknown)} folder name(s) under {root} are not in the species "
            f"file: {names}. Known species: {', '.join(s.name for s in species)} "
            "(spaces or underscores, any case)"
        )
    return found


def _photos_in(
    found: list[tuple[str, Species, Path]], *, root: Path, skipped: list[Skipped]
) -> list[FolderPhoto]:
    """The image files below each species folder; other files go to `skipped`."""
    photos: list[FolderPhoto] = []
    for split, sp, d in found:
        for path in _walk(d, root, skipped):
            ext = path.suffix.lower()
            rel = path.relative_to(root).as_posix()
            if ext not in IMAGE_EXTENSIONS:
                skipped.append(Skipped(rel, f"not an image ({ext or 'no extension'})"))
                continue
            m = OBSERVATION_PATTERN.match(path.name)
            photos.append(FolderPhoto(path, rel, sp.name, split, m.group(1) if m else None))
    return photos


def _visible(folder: Path, root: Path, skipped: list[Skipped]) -> list[Path]:
    """Sub-folders of `folder`, sorted; its files and hidden entries go to `skipped`."""
    dirs = []
    for p in sorted(folder.iterdir()):
        rel = p.relative_to(root).as_posix()
        if p.name.startswith("."):
            skipped.append(Skipped(rel, "hidden"))
        elif p.is_dir():
            dirs.append(p)
        else:
            skipped.append(Skipped(rel, "outside a species folder"))
    return dirs


def _walk(folder: Path, root: Path, skipped: list[Skipped]) -> list[Path]:
    """Every visible file below `folder`, sorted; hidden files and folders go to `skipped`."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for name in [n for n in dirnames if n.startswith(".")]:
            skipped.append(Skipped((here / name).relative_to(root).as_posix(), "hidden"))
            dirnames.remove(name)  # do not descend into .git, .thumbnails, ...
        for name in filenames:
            if name.startswith("."):
                skipped.append(Skipped((here / name).relative_to(root).as_posix(), "hidden"))
            else:
                files.append(here / name)
    return sorted(files)


def _check_observation_splits(photos: list[FolderPhoto]) -> None:
    splits: dict[tuple[str, str], set[str]] = {}
    for p in photos:
        if p.observation is not None:
            splits.setdefault((p.taxon, p.observation), set()).add(p.split)
    for (taxon, obs), where in sorted(splits.items()):
        if len(where) > 1:
            raise UserError(
                f"download.folder: observation obs-{obs}__ of {taxon} has photos in "
                f"{' and '.join(s + '/' for s in sorted(where))}; "
                "the photos of one observation must share a split"
            )


def _names(folders: list[Path]) -> str:
    return ", ".join(f"{d.name}/" for d in folders)
