"""Stage `download`: fill the raw photo folder from `download.source` (demo, folder or inat).

    python stages/download.py --out data/raw

Writes `<out>/images/<species>/`, `<out>/manifest.csv` and `<out>/skipped.csv`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from snakeid.config import base_config, load_params, section
from snakeid.sources import DownloadConfig, run_download
from snakeid.stage import run_stage
from snakeid.taxa import load_species


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", required=True, type=Path, help="raw photos and manifest.csv go here"
    )
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_params(args.params)
    base = base_config(params)
    cfg = section(params, "download", DownloadConfig)
    species = load_species(base.species_file)

    run_download(cfg, species, args.out, seed=base.seed)


if __name__ == "__main__":
    run_stage(main)
