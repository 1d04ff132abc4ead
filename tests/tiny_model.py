"""Test helpers: a tiny exported model in the pipeline's format, demo photos, a live server.

The model is a random conv net exported by the library's exporter (`snakeid.model.export`) with the
`model_meta.json` that `snakeid.model.export.model_meta` writes, and quantized by
`snakeid.deploy.quantize`,
so tests exercise the real contract: a renamed meta key breaks them. Torch is fine here; it is
only the serving path that must not import it.
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

from snakeid.data.dataset import eval_preprocess_spec
from snakeid.deploy.quantize import QuantizeConfig
from snakeid.deploy.quantize import quantize as run_quantize
from snakeid.model.checkpoint import Checkpoint
from snakeid.model.export import ExportConfig, model_meta
from snakeid.model.onnx_export import export_onnx

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
    "from snakeid.deploy.cli import main; sys.exit(main())"
)


def tiny_net(n_classes: int, favour: int | None, seed: int = 0) -> Any:
    """A random conv net, (N, 3, S, S) -> (N, n_classes); `favour` wins for any photo. It has
    the `embed` / `head` halves of `snakeid.model.models.SnakeNet` that `DeployedModel` calls."""
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
            )
            self.classifier = nn.Linear(8, n_classes)

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return self.features(x)

        def head(self, z: torch.Tensor) -> torch.Tensor:
            return self.classifier(z)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(x))

    torch.manual_seed(seed)
    net = TinyNet()
    if favour is not None:
        # Tests (the browser one especially) then know what the page must show.
        with torch.no_grad():
            net.classifier.bias[favour] += 3.0
    return net.eval()


def tiny_unknown_score(net: Any, image_size: int, photos: int = 24) -> Any:
    """The library's unknown-species score fitted on the tiny net's features of random
    colour fields (3 folds, as a refitted probe's out-of-fold photos). Demo photos would all
    point the same way in the tiny net's 8-d feature space and make the score's scale blow up."""
    import torch

    from snakeid.model.openset import UnknownScore

    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 2, (photos, 3, 1, 1)) + rng.normal(
        0, 1, (photos, 3, image_size, image_size)
    )
    with torch.inference_mode():
        z = net.embed(torch.from_numpy(x.astype(np.float32)))
        logits = net.head(z).numpy()
    folds = np.arange(photos) % 3
    return UnknownScore.fit(
        z.numpy()[None], z.numpy(), logits, bank_folds=folds, held_folds=folds, known_pass_rate=0.95
    )


def build_tiny_model(
    out_dir: Path,
    *,
    species: Sequence[dict[str, Any]] = SPECIES,
    image_size: int = IMAGE_SIZE,
    favour: int | None = 0,
    decision: dict[str, float] | None = None,
    data_source: str | None = None,
    quantize: bool = False,
    region: str | None = None,
) -> tuple[Path, Any]:
    """Write `model_fp32.onnx` (and `model_int8.onnx` if asked) + `model_meta.json` with the
    library's exporter, `model_meta` and quantizer, as the pipeline's stages do.

    `decision` sets the thresholds (default 0.5 each, and the fitted unknown threshold);
    `data_source` ("demo-synthetic", "folder", ...) becomes the meta's `data.source`. Returns
    (path of the model to use, the deployed torch module) so tests can compare outputs.
    """
    from snakeid.model.deployed import DeployedModel

    net = tiny_net(len(species), favour)
    score = tiny_unknown_score(net, image_size)
    model = DeployedModel(net, openset=score.module()).eval()  # type: ignore[arg-type]
    meta = tiny_meta(
        species, image_size, decision=decision, data_source=data_source,
        unknown_score=score.describe(), region=region,
    )  # fmt: skip
    fp32 = out_dir / "model_fp32.onnx"
    export_onnx(model, fp32, image_size, opset=17)
    (out_dir / "model_meta.json").write_text(json.dumps(meta, indent=2))
    if not quantize:
        return fp32, model
    int8 = out_dir / "model_int8.onnx"
    rng = np.random.default_rng(0)
    calibration = [
        rng.standard_normal((1, 3, image_size, image_size), np.float32) for _ in range(8)
    ]
    run_quantize(fp32, int8, QuantizeConfig(keep_edges_fp32=False), calibration)
    return int8, model


def tiny_meta(
    species: Sequence[dict[str, Any]] = SPECIES,
    image_size: int = IMAGE_SIZE,
    *,
    decision: dict[str, float] | None = None,
    data_source: str | None = None,
    unknown_score: dict[str, Any] | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    """`snakeid.model.export.model_meta` of a checkpoint-like record of the tiny net;
    `unknown_score` is `UnknownScore.describe()` (default: a score whose threshold flags
    nothing)."""
    decision = {"low_confidence_threshold": 0.5, "venomous_threshold": 0.5} | (decision or {})
    unknown_score = dict(unknown_score or {"score": "none", "threshold": 1e9})
    if "unknown_threshold" in decision:
        unknown_score["threshold"] = decision["unknown_threshold"]
    ckpt = Checkpoint(
        state_dict={},
        species=[dict(s) for s in species],
        backbone=["tiny_test_net"],
        trunk_sizes=[image_size],
        image_size=image_size,
        dropout=0.0,
        tta_flip=False,
        preprocess=eval_preprocess_spec(image_size),
        params={"tests": True},
        stage="finetune",
        metrics={},
        calibration={
            "temperature": 1.0,
            "venomous_threshold": decision["venomous_threshold"],
            "low_confidence_threshold": decision["low_confidence_threshold"],
        },
        holdout=None,
        openset=None,
    )
    cfg = ExportConfig()
    data = {} if data_source is None else {"source": data_source}
    return model_meta(
        ckpt, cfg, region=region, unknown_score=unknown_score, data=data, evaluation={}
    ).to_dict()


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
    import httpx2

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
                with contextlib.suppress(httpx2.TransportError):
                    if httpx2.get(f"{url}/health", timeout=1.0).status_code == 200:
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
