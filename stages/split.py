"""Stage `split`: assign clean photos to train/val/test, grouped by observation.

python stages/split.py --clean data/clean --out data/split \
    --metrics metrics/split.json --report reports/split.json
"""

from __future__ import annotations

import argparse

from snakeid import split
from snakeid.config import base_config, load_params, section
from snakeid.stage import run_stage
from snakeid.taxa import load_species
from snakeid.utils import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", required=True, help="verify output (holds manifest.csv)")
    parser.add_argument("--out", required=True, help="train.csv, val.csv and test.csv go here")
    parser.add_argument("--metrics", required=True, help="photos per split (DVC metrics)")
    parser.add_argument("--report", required=True, help="per species and fractions (JSON)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_params(args.params)
    base = base_config(params)
    cfg = section(params, "split", split.SplitConfig)
    species = load_species(base.species_file)

    result = split.run(args.clean, args.out, species, cfg, base.seed)
    write_json(args.report, result.metrics)
    photos = result.metrics["photos"]
    write_json(args.metrics, {"photos": {k: photos[k] for k in ("train", "val", "test")}})


if __name__ == "__main__":
    run_stage(main)
