"""Stage `split`: assign clean photos to train/val/test, grouped by observation.

python stages/split.py --clean data/clean --out data/split \
    --metrics metrics/split.json --report reports/split.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from snakeid.config import section
from snakeid.data import split
from snakeid.data.manifest import SPLITS
from snakeid.stage import run_stage, stage_inputs
from snakeid.utils import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clean", type=Path, required=True, help="verify output (holds manifest.csv)")
    ap.add_argument("--out", type=Path, required=True, help="{train,val,test,unknown}.csv go here")
    ap.add_argument("--metrics", type=Path, required=True, help="photos per split (DVC metrics)")
    ap.add_argument("--report", type=Path, required=True, help="per species and fractions (JSON)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    inputs = stage_inputs(args.params)
    params, base, species = inputs.params, inputs.base, inputs.species
    cfg = section(params, "split", split.SplitConfig)

    result = split.run(args.clean, args.out, species, cfg, base.seed)
    write_json(args.report, result.metrics)
    photos = result.metrics["photos"]
    write_json(args.metrics, {"photos": {k: photos[k] for k in (*SPLITS, split.UNKNOWN)}})


if __name__ == "__main__":
    run_stage(main)
