"""What the exported model is, in one torch-free home at the bottom of the package: its metadata
format, its ONNX input and output names, the marker of a synthetic model and the decision
defaults. Export writes these; predict, the service, the model card and the quantize stage read
them; the model builds its outputs under these names.
"""

from __future__ import annotations

META_FORMAT = "snakeid-model/2"  # 2: the unknown-species score (output and threshold)
# (`region`, added later, is optional: a model without it reads as "region not stated")
META_FILENAME = "model_meta.json"  # beside the ONNX model

INPUT_NAME = "input"  # NCHW float32 images, preprocessed as `preprocess` in the metadata says
OUTPUT_NAME = "logits"  # calibrated logits (temperature applied): softmax gives probabilities
UNKNOWN_NAME = "unknown_score"  # higher = less likely one of the species (snakeid.openset)

SYNTHETIC_SOURCE = "demo-synthetic"  # data.source of a model trained on the demo's generated photos

# The decision without fitted thresholds (a head before calibration, a model whose metadata has
# none): "low confidence" under this top-1 probability; "possibly venomous" at or over this
# summed probability of the venomous species.
DEFAULT_LOW_CONFIDENCE = 0.5
DEFAULT_VENOMOUS_THRESHOLD = 0.5
