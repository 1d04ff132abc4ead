"""Reproduce the INT8 model's test predictions with nothing but ONNX Runtime, numpy and Pillow.

An application that ships `model_int8.onnx` + `model_meta.json` does exactly this; the script
checks that doing so gives the same predictions the pipeline reported (`quantize` writes them to
`plots/predictions_int8.csv`). It deliberately imports nothing from snakeid.

    python bench/reproduce_int8.py --model models/model_int8.onnx --meta models/model_meta.json \
        --predictions plots/predictions_int8.csv
"""

import argparse
import csv
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def preprocess(path: str, pre: dict) -> np.ndarray:
    """The `preprocess` block of model_meta.json, implemented from its description."""
    with Image.open(path) as im:
        if pre["exif_transpose"]:
            im = ImageOps.exif_transpose(im)
        im = im.convert("RGB")
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = pre["resize_shorter"], int(pre["resize_shorter"] * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if size != im.size:
        im = im.resize(size, Image.Resampling.BILINEAR)
    c = pre["crop"]
    left, top = int(round((im.width - c) / 2.0)), int(round((im.height - c) / 2.0))
    im = im.crop((left, top, left + c, top + c))
    x = np.asarray(im, dtype=np.float32) * np.float32(pre["scale"])
    x = (x - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    return x.transpose(2, 0, 1)  # HWC -> CHW


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="models/model_int8.onnx")
    ap.add_argument("--meta", default="models/model_meta.json")
    ap.add_argument("--predictions", default="plots/predictions_int8.csv")
    args = ap.parse_args()

    with open(args.meta) as f:
        meta = json.load(f)
    names = [s["name"] for s in meta["species"]]
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    with open(args.predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    mismatches = 0
    for i in range(0, len(rows), 32):
        batch = rows[i : i + 32]
        x = np.stack([preprocess(r["path"], meta["preprocess"]) for r in batch])
        logits, unknown_score = session.run(
            [meta["output_name"], meta["unknown_output_name"]], {meta["input_name"]: x}
        )
        unknown = unknown_score > meta["decision"]["unknown_threshold"]
        for r, k, u in zip(batch, logits.argmax(1), unknown, strict=True):
            if names[k] != r["predicted"] or int(u) != int(r["unknown"]):
                mismatches += 1
                print(
                    f"MISMATCH {r['path']}: {names[k]} (unknown {int(u)}) != reported "
                    f"{r['predicted']} (unknown {r['unknown']})"
                )
    print(
        f"{len(rows) - mismatches}/{len(rows)} test photos: same INT8 prediction and unknown "
        "flag as reported"
    )
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
