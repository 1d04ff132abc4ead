"""Stage `verify`: decode every raw photo, drop broken/duplicate ones, write normalised copies.

    python stages/verify.py --raw data/raw --out data/clean \
        --metrics metrics/verify.json --report reports/verify.json \
        --dropped reports/verify_dropped.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

from snakeid.config import section
from snakeid.data import verify
from snakeid.data.manifest import write_manifest
from snakeid.stage import run_stage, stage_inputs
from snakeid.utils import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", type=Path, required=True, help="download output (holds manifest.csv)")
    ap.add_argument("--out", type=Path, required=True, help="clean images and manifest.csv go here")
    ap.add_argument("--metrics", type=Path, required=True, help="headline counts (DVC metrics)")
    ap.add_argument("--report", type=Path, required=True, help="per species and reason (JSON)")
    ap.add_argument("--dropped", type=Path, required=True, help="CSV listing every dropped photo")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    inputs = stage_inputs(args.params)
    params, species = inputs.params, inputs.species
    cfg = section(params, "verify", verify.VerifyConfig)

    result = verify.run(args.raw, args.out, species, cfg)
    write_manifest(args.dropped, result.dropped, verify.DROPPED_COLUMNS)
    write_json(args.report, result.metrics)
    write_json(args.metrics, {k: result.metrics[k] for k in ("kept", "dropped")})


if __name__ == "__main__":
    run_stage(main)
