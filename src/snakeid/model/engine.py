"""What runs a frozen network for inference: ONNX Runtime or eager PyTorch.

On the CPU an FP32 ONNX export run by ONNX Runtime is about 3x the images/s of eager PyTorch
(bench/results.md) and computes the same outputs to float16 precision (tested); on a GPU PyTorch
runs it. The training stages use it for the feature cache, `evaluate` for the test photos.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn


def feature_engine(choice: str, device: str) -> str:
    """`data.feature_engine` resolved: auto = onnxruntime on the CPU, torch on a GPU."""
    if choice == "auto":
        return "onnxruntime" if device == "cpu" else "torch"
    return choice


@contextlib.contextmanager
def prefix_engine(
    prefix: nn.Module, engine: str, device: str, image_size: int
) -> Iterator[Callable[[torch.Tensor], np.ndarray]]:
    """The frozen `prefix` (eval mode, no autograd) as a function: images (B, 3, H, W) float32
    → features float32 numpy (a tuple of arrays for a module with several outputs).

    `onnxruntime` runs an FP32 ONNX export of the prefix (graph optimisations on, this
    process's torch thread count); `torch` runs it eagerly in channels_last on `device`, and
    leaves it on the CPU in the contiguous format afterwards.
    """
    prefix.eval()
    if engine == "torch":
        prefix.to(device).to(memory_format=torch.channels_last)

        @torch.inference_mode()
        def run_torch(x: torch.Tensor) -> np.ndarray:
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            out = prefix(x)
            if isinstance(out, tuple):
                return tuple(o.float().cpu().numpy() for o in out)
            return out.float().cpu().numpy()

        try:
            yield run_torch
        finally:
            prefix.to("cpu").to(memory_format=torch.contiguous_format)
        return
    from snakeid.contract import INPUT_NAME
    from snakeid.model.onnx_export import export_onnx
    from snakeid.model.onnxio import ort_session

    with tempfile.TemporaryDirectory(prefix="snakeid-prefix-") as tmp:
        path = Path(tmp) / "prefix.onnx"
        export_onnx(copy.deepcopy(prefix).cpu(), path, image_size, opset=17)
        # no spin-waiting between runs: the threads would take the CPU from decoding the next batch
        session = ort_session(path, torch.get_num_threads(), spin=False)

        def run_ort(x: torch.Tensor) -> np.ndarray:
            out = session.run(None, {INPUT_NAME: x.numpy()})
            return out[0] if len(out) == 1 else tuple(out)

        yield run_ort
