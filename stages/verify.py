"""Stage `verify`: decode every raw photo, drop broken/duplicate ones, write normalised copies.

    python stages/verify.py --raw data/raw --out data/clean \
        --metrics metrics/verify.json --report reports/verify.json \
        --dropped reports/verify_dropped.csv
"""

from __future__ import annotations

import argparse

from snakeid import verify
from snakeid.config import base_config, load_params, section
from snakeid.manifest import write_manifest
from snakeid.stage import run_stage
from snakeid.taxa import load_species
from snakeid.utils import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", required=True, help="download output (holds manifest.csv)")
    parser.add_argument("--out", required=True, help="clean images and manifest.csv go here")
    parser.add_argument("--metrics", required=True, help="headline counts (DVC metrics)")
    parser.add_argument("--report", required=True, help="per species and reason (JSON)")
    parser.add_argument("--dropped", required=True, help="CSV listing every dropped photo")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_params(args.params)
    base = base_config(params)
    cfg = section(params, "verify", verify.VerifyConfig)
    species = load_species(base.species_file)

    result = verify.run(args.raw, args.out, species, cfg)
    write_manifest(args.dropped, result.dropped, verify.DROPPED_COLUMNS)
    write_json(args.report, result.metrics)
    write_json(args.metrics, {k: result.metrics[k] for k in ("kept", "dropped")})


if __name__ == "__main__":
    run_stage(main)
