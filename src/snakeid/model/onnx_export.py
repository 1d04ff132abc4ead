"""Export a torch module to ONNX under the contract's input name and the module's output names:
the call the feature engine (a frozen prefix) and export (the deployed model) share."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from snakeid.contract import INPUT_NAME, OUTPUT_NAME


def export_onnx(model: torch.nn.Module, path: Path, image_size: int, opset: int) -> None:
    """TorchScript-based export (dynamo=False): NCHW float32 `input` → the model's
    `output_names` (default just `logits`), dynamic batch."""
    model = model.eval().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it cannot constant-fold Slice ops with steps > 1
        # (the graph is correct and ORT folds them); nothing for a user to act on.
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        # dynamo=False on purpose (the dynamo exporter needs onnxscript); it works in torch 2.14
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        _export(model, dummy, path, opset)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def output_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The module's ONNX outputs: its `output_names`, else just the logits."""
    return tuple(getattr(model, "output_names", (OUTPUT_NAME,)))


def _export(model: torch.nn.Module, dummy: torch.Tensor, path: Path, opset: int) -> None:
    names = output_names(model)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=list(names),
        dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *names)},
        do_constant_folding=True,
    )
