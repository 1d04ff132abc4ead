"""Photo sources for the `download` stage; each writes images under `<out>/images/<species>/`.

    demo    synthetic photos generated offline (`snakeid.data.sources.demo`)
    folder  your own photos, one folder per species (`snakeid.data.sources.folder`)
    inat    research-grade iNaturalist observations (`snakeid.data.sources.inat`)

`run_download` dispatches on `download.source` and writes `<out>/manifest.csv` (the columns of
`snakeid.data.manifest.MANIFEST_COLUMNS`) and `<out>/skipped.csv` (files a source passed over).
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snakeid.config import ParamsError, spec
from snakeid.data.manifest import write_manifest
from snakeid.data.sources.demo import DemoConfig, generate_demo
from snakeid.data.sources.folder import Skipped, import_folder, scan_folder
from snakeid.data.sources.inat import STATE_DIR, download_inat
from snakeid.data.sources.inat_config import InatConfig
from snakeid.errors import UserError
from snakeid.taxa import Species

_logger = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("demo", "folder", "inat")
SKIPPED_COLUMNS: tuple[str, ...] = ("path", "reason")

# Everything any source writes into the output folder; a folder holding anything else is not
# a previous download and is never deleted.
_OUTPUTS = frozenset(
    {"images", "manifest.csv", "skipped.csv", STATE_DIR, "taxa_resolved.json", "ATTRIBUTION.csv"}
)


@dataclass(frozen=True)
class DownloadConfig:
    source: str = field(default="demo", metadata=spec(choices=SOURCES))
    folder: str | None = None  # root of the user's photos, for source: folder
    demo: DemoConfig = field(default_factory=DemoConfig)
    inat: InatConfig = field(default_factory=InatConfig)

    def __post_init__(self) -> None:
        if self.source == "folder" and not self.folder:
            raise ParamsError(
                "download.folder: required when download.source is folder "
                "(the folder holding <species>/ or train/<species>/ sub-folders)"
            )


def run_download(
    cfg: DownloadConfig, species: list[Species], out_dir: Path, *, seed: int
) -> list[dict[str, Any]]:
    """Fill `out_dir` from the configured source; returns the manifest rows it wrote.

    demo and folder start from an empty `out_dir`, so a rerun gives exactly the same output;
    inat resumes where an earlier inat run stopped.
    """
    out_dir = Path(out_dir)
    skipped: list[Skipped] = []
    if cfg.source == "demo":
        _start_empty(out_dir)
        rows = generate_demo(cfg.demo, species, out_dir, seed=seed)
    elif cfg.source == "folder":
        assert cfg.folder is not None  # DownloadConfig checks it
        scan = scan_folder(Path(cfg.folder), species)  # every check before anything is deleted
        _start_empty(out_dir)
        rows = import_folder(scan, out_dir)
        skipped = scan.skipped
    else:
        if not (out_dir / STATE_DIR).is_dir():
            _start_empty(out_dir)  # nothing to resume; another source's photos must not mix in
        rows = download_inat(cfg.inat, species, out_dir, seed=seed)
    write_manifest(out_dir / "manifest.csv", rows)
    write_manifest(out_dir / "skipped.csv", [vars(s) for s in skipped], columns=SKIPPED_COLUMNS)
    _log_summary(cfg.source, rows, species)
    return rows


def _start_empty(out_dir: Path) -> None:
    """Remove an earlier download in `out_dir`; refuse if the folder holds anything else."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"{out_dir}: exists and is not a folder")
        stray = sorted(p.name for p in out_dir.iterdir() if p.name not in _OUTPUTS)
        if stray:
            raise UserError(
                f"{out_dir}: holds files the download stage did not write "
                f"({', '.join(stray[:3])}{', ...' if len(stray) > 3 else ''}); "
                "move them away or choose another output folder"
            )
        _logger.info("removing the previous download in %s", out_dir)
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def _log_summary(source: str, rows: list[dict[str, Any]], species: list[Species]) -> None:
    photos = Counter(r["taxon"] for r in rows)
    observations = {t: len({r["observation_id"] for r in rows if r["taxon"] == t}) for t in photos}
    _logger.info(
        "%s: %d photos, %d observations, %d species",
        source,
        len(rows),
        sum(observations.values()),
        len(photos),
    )
    width = max(len(s.name) for s in species)
    for s in species:
        _logger.info(
            "  %-*s %5d photos %5d observations",
            width,
            s.name,
            photos.get(s.name, 0),
            observations.get(s.name, 0),
        )
    missing = [s.name for s in species if not photos.get(s.name)]
    if missing:
        _logger.warning("no photos for %d species: %s", len(missing), ", ".join(missing))
