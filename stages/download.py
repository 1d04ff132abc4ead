"""Stage `download`: fill the raw photo folder from `download.source` (demo, folder or inat).

    python stages/download.py --out data/raw

Writes `<out>/images/<species>/`, `<out>/manifest.csv` and `<out>/skipped.csv`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from snakeid.config import section
from snakeid.data.sources import DownloadConfig, run_download
from snakeid.stage import run_stage, stage_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="raw photos and manifest.csv go here")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    inputs = stage_inputs(args.params)
    params, base, species = inputs.params, inputs.base, inputs.species
    cfg = section(params, "download", DownloadConfig)

    run_download(cfg, species, args.out, seed=base.seed)


if __name__ == "__main__":
    run_stage(main)
