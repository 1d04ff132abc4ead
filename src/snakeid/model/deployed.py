"""The network as evaluated and exported: a `SnakeNet` with its val-fitted temperature, its
test-time augmentation and its unknown-species score, in one module whose outputs are the
exported model's (`snakeid.contract` names them)."""

from __future__ import annotations

import torch
from torch import nn

from snakeid.contract import OUTPUT_NAME, UNKNOWN_NAME
from snakeid.model.models import SnakeNet


class DeployedModel(nn.Module):
    """What gets evaluated and exported: the network plus its inference-time choices.

    Outputs: calibrated logits = mean over (image[, mirrored image]) of logits / temperature, so
    `softmax(logits)` are the calibrated probabilities; and, with an `openset` module (every
    trained checkpoint has one), the unknown-species score it computes from the pooled features
    (averaged over the same views) and those logits: higher = less likely a known species.
    """

    def __init__(
        self,
        net: SnakeNet,
        *,
        temperature: float = 1.0,
        tta_flip: bool = False,
        openset: nn.Module | None = None,
    ):
        super().__init__()
        self.net = net
        self.temperature = float(temperature)
        self.tta_flip = tta_flip
        self.openset = openset

    @property
    def output_names(self) -> tuple[str, ...]:
        return (OUTPUT_NAME, UNKNOWN_NAME) if self.openset is not None else (OUTPUT_NAME,)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        z = self.net.embed(x)
        if self.tta_flip:
            z = 0.5 * (z + self.net.embed(torch.flip(x, dims=[3])))
        # the head is linear (dropout is off in eval): head(mean of z) = mean of head(z)
        logits = self.net.head(z) / self.temperature
        if self.openset is None:
            return logits
        return logits, self.openset(z, logits)


def deployed(
    model: SnakeNet, *, temperature: float, tta_flip: bool, openset: nn.Module | None = None
) -> DeployedModel:
    """The model as evaluated and exported: with its val-fitted temperature, the TTA it was
    calibrated with and its unknown-species score."""
    return DeployedModel(model, temperature=temperature, tta_flip=tta_flip, openset=openset).eval()
