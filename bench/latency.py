"""Inference latency of the multi-backbone model beside the single-backbone one, side by side.

    python bench/latency.py --out bench/latency.json     # markdown beside it (~3 min)

Both models are built by `snakeid.model.models.build_model` (pretrained trunks, a 17-species head),
exported by `snakeid.model.export.export_onnx` and quantized by
`snakeid.deploy.quantize.quantize` with the
`quantize` section of params.yaml, calibrated on the same photos (the demo split's training
photos when `data/split` exists, else random tensors: latency does not depend on the values).
Every variant is timed in the same rounds (`bench/_inference.time_variants`: a block of calls
after a pause, so no neighbour's spinning threads are timed). Compare the ratios, not the
absolute times: the machine is shared.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from _inference import _ort, cores, time_variants  # noqa: E402
from snakeid.config import load_params, section  # noqa: E402
from snakeid.data.dataset import eval_batches  # noqa: E402
from snakeid.data.manifest import read_manifest  # noqa: E402
from snakeid.deploy.quantize import QuantizeConfig, quantize  # noqa: E402
from snakeid.model.deployed import DeployedModel  # noqa: E402
from snakeid.model.models import ModelConfig, build_model  # noqa: E402
from snakeid.model.onnx_export import export_onnx  # noqa: E402
from snakeid.taxa import load_species  # noqa: E402
from snakeid.utils import write_json  # noqa: E402

MODELS = {
    "efficientnet_lite0": ["efficientnet_lite0"],
    "lite0+lite1+lite2": ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
}


def calibration(size: int, n: int) -> list[np.ndarray]:
    split = REPO / "data/split/train.csv"
    if split.exists():
        rows = read_manifest(split)[:n]
        return eval_batches(rows, load_species(REPO / "data/taxa.yaml"), size, batch_size=1)
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 3, size, size)).astype(np.float32) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=8, help="timing rounds (batch 1: 5 calls each)")
    ap.add_argument("--calibration-images", type=int, default=100)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    quant = section(load_params(REPO / "params.yaml"), "quantize", QuantizeConfig)
    n_species = len(load_species(REPO / "data/taxa.yaml"))
    variants, sizes, inputs = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, backbones in MODELS.items():
            model = DeployedModel(build_model(backbones, n_species, ModelConfig())).eval()
            size = model.net.input_size
            fp32, int8 = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}_int8.onnx"
            export_onnx(model, fp32, size, opset=17)
            quantize(fp32, int8, quant, calibration(size, args.calibration_images))
            sizes[name] = {"input": size, "fp32_mb": fp32.stat().st_size / 1e6,
                           "int8_mb": int8.stat().st_size / 1e6}  # fmt: skip
            for kind, path in (("fp32", fp32), ("int8", int8)):
                variants[f"{name} {kind}"] = _ort(path, cores())
                inputs[f"{name} {kind}"] = size
        rng = np.random.default_rng(1)
        # one input per side: each variant gets the side it was exported for
        timing = {}
        for size in sorted(set(inputs.values())):
            mine = {k: v for k, v in variants.items() if inputs[k] == size}
            x32 = rng.standard_normal((32, 3, size, size)).astype(np.float32)
            timing |= time_variants(mine, x32[:1], x32, args.rounds * 5, args.rounds)
    single, multi = MODELS
    result = {
        "cores": cores(),
        "quantize": {"activations": quant.activations, "method": quant.method},
        "models": sizes,
        "timing": timing,
        "ratios": {
            "multi_int8_vs_single_int8_b1": timing[f"{multi} int8"]["b1_median_ms"]
            / timing[f"{single} int8"]["b1_median_ms"],
            "multi_int8_vs_multi_fp32_b1": timing[f"{multi} int8"]["b1_median_ms"]
            / timing[f"{multi} fp32"]["b1_median_ms"],
        },
    }
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        f"`python bench/latency.py` on {r['cores']} cores, ONNX Runtime, INT8 = static QDQ "
        f"({r['quantize']['activations']} activations), as the pipeline quantizes:",
        "",
        "| model | input | size MB | batch-1 median ms | batch-1 p95 ms | batch-32 img/s |",
        "|---|---|---|---|---|---|",
    ]
    for k, t in r["timing"].items():
        name, kind = k.rsplit(" ", 1)
        m = r["models"][name]
        lines.append(
            f"| {k} | {m['input']} | {m[f'{kind}_mb']:.1f} | {t['b1_median_ms']:.1f} "
            f"| {t['b1_p95_ms']:.1f} | {t['b32_images_per_s']:.0f} |"
        )
    lines += ["", "Ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
