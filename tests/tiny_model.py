"""Test helpers: a tiny exported model in the pipeline's format, demo photos, a live server.

The model is a random conv net exported exactly as the exporter exports (ONNX opset 17, input
`input`, output `logits`, dynamic batch) with a `model_meta.json` whose preprocessing comes from
`snakeid.data.eval_preprocess_spec`, so tests exercise the real contract. Torch is fine here;
it is only the serving path that must not import it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SPECIES: list[dict[str, Any]] = [
    {"name": "Naja kaouthia", "common": "Monocled Cobra", "venomous": True},
    {"name": "Ptyas korros", "common": "Indo-Chinese Rat Snake", "venomous": False},
    {"name": "Bungarus fasciatus", "common": "Banded Krait", "venomous": True},
    {"name": "Oligodon fasciolatus", "common": "Small-banded Kukri Snake", "venomous": False},
]
IMAGE_SIZE = 64

# Runs the CLI with torch and torchvision made unimportable: proof the serving path needs neither.
NO_TORCH_MAIN = (
    "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
    "from snakeid.cli import main; sys.exit(main())"
)


def tiny_net(n_classes: int, favour: int | None, seed: int = 0) -> Any:
    """A random conv net, (N, 3, S, S) -> (N, n_classes); `favour` wins for any photo."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, n_classes),
    )
    if favour is not None:
        # Tests (the browser one especially) then know what the page must show.
        with torch.no_grad():
            net[-1].bias[favour] += 3.0
    return net.eval()


def build_tiny_model(
    out_dir: Path,
    *,
    species: Sequence[dict[str, Any]] = SPECIES,
    image_size: int = IMAGE_SIZE,
    favour: int | None = 0,
    decision: dict[str, float] | None = None,
    data_source: str | None = None,
    quantize: bool = False,
) -> tuple[Path, Any]:
    """Write `model_fp32.onnx` (and `model_int8.onnx` if asked) + `model_meta.json`.

    `data_source` ("demo-synthetic", "folder", ...) becomes the meta's `data.source`; None
    leaves the `data` block out. Returns (path of the model to use, the torch module) so tests
    can compare outputs.
    """
    import torch

    from snakeid.data import eval_preprocess_spec

    out_dir.mkdir(parents=True, exist_ok=True)
    net = tiny_net(len(species), favour)
    fp32 = out_dir / "model_fp32.onnx"
    with warnings.catch_warnings():
        # The legacy exporter is what the pipeline's exporter uses too (dynamo=False).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            torch.randn(2, 3, image_size, image_size),
            str(fp32),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    meta = {
        "format": "snakeid-model/1",
        "species": [dict(s) for s in species],
        "preprocess": eval_preprocess_spec(image_size),
        "input_name": "input",
        "output_name": "logits",
        # Informational keys the real exporter also writes; serving needs only softmax(output).
        "output": "calibrated logits: softmax gives the probabilities (temperature applied)",
        "temperature": 1.0,
        "tta_flip": False,
        "backbone": "tiny_test_net",
        "image_size": image_size,
        "params_digest": "0" * 64,
        "created_by": "snakeid tests",
    }
    if decision is not None:
        meta["decision"] = decision
    if data_source is not None:
        meta["data"] = {"source": data_source}
    (out_dir / "model_meta.json").write_text(json.dumps(meta, indent=2))
    if not quantize:
        return fp32, net
    int8 = out_dir / "model_int8.onnx"
    _quantize_static(fp32, int8, image_size)
    return int8, net


def _quantize_static(fp32: Path, int8: Path, image_size: int) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter(
                [
                    {"input": rng.standard_normal((1, 3, image_size, image_size), dtype=np.float32)}
                    for _ in range(8)
                ]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(fp32),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def demo_photo(path: Path, size: tuple[int, int] = (320, 240), seed: int = 0) -> Path:
    """A photo-like JPEG: smooth gradients, a banded 'snake' curve and sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [90 + 60 * xx / w, 110 + 50 * yy / h, 70 + 30 * np.sin(xx / 17.0) * np.cos(yy / 23.0)],
        axis=-1,
    )
    curve = np.abs(yy - (h / 2 + h / 5 * np.sin(xx / w * 2 * np.pi))) < h / 14
    bands = (np.floor(xx / (w / 12)) % 2).astype(bool)
    base[curve & bands] = (235, 225, 40)
    base[curve & ~bands] = (15, 15, 20)
    img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90)
    return path


@contextlib.contextmanager
def pillow_limits_restored() -> Iterator[None]:
    """`create_app` and the CLI set Pillow's process-wide pixel limit; undo it for other tests."""
    saved = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        yield
    Image.MAX_IMAGE_PIXELS = saved


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model: Path, log_dir: Path, *args: str, timeout: float = 30.0) -> Iterator[str]:
    """Start `snakeid serve` (torch poisoned) on a free loopback port; yield its base URL."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-c",
        NO_TORCH_MAIN,
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        *args,
    ]
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {proc.returncode}:\n{log_path.read_text()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"server not healthy after {timeout}s:\n{log_path.read_text()}"
                    )
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
