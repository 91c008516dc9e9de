"""Image classifiers built from ODE blocks."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .block import ODEBlock

NORMS = ("batch", "group", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    """'batch' (default); 'group' does not depend on the batch, so a DistributedDataParallel run gives the
    gradient of one process on the global batch (BatchNorm normalises each process's shard by itself)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def _conv_norm_relu(c_in: int, c_out: int, kernel_size: int, norm: str) -> list:
    return [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=norm == "none"),
            _norm(norm, c_out), nn.ReLU(inplace=True)]


class ContinuousResNet(nn.Module):
    """A continuous ResNet classifier (Haber & Ruthotto; Ruthotto & Haber).

    opening 3x3 convolution -> norm -> relu, then for each width an ODEBlock (the stage) followed, between
    stages, by a connecting layer (1x1 convolution to the next width -> norm -> relu -> 2x2 average pooling),
    then global average pooling and a linear classifier. The stages do the feature transformation as an ODE; the
    connecting layers change width and resolution, which an ODE cannot.

    n_steps, n_controls, T, layer, activation, interp, kernel_size, backend, checkpoint, gradient, method and memory
    are passed to every ODEBlock (see contres.ODEBlock), and block_norm as its norm ('none' or 'tv', inside the
    blocks); norm ('batch', 'group' or 'none') is the normalisation of the opening and connecting layers.
    """

    def __init__(self, in_channels: int, num_classes: int, widths=(16, 32, 64), n_steps: int = 4,
                 n_controls: int | None = None, layer: str = "single", activation: str = "relu",
                 interp: str = "constant", backend: str = "auto", *, T: float = 1.0, kernel_size: int = 3,
                 checkpoint=False, gradient: str = "discrete", norm: str = "batch", block_norm: str = "none",
                 method: str = "euler", memory: str = "states"):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty sequence of positive integers, got {widths!r}")
        self.widths = widths
        self.stem = nn.Sequential(*_conv_norm_relu(in_channels, widths[0], 3, norm))
        self.blocks = nn.ModuleList(
            ODEBlock(w, n_steps, n_controls, T, layer, activation, interp, kernel_size, backend, checkpoint,
                     gradient=gradient, norm=block_norm, method=method, memory=memory) for w in widths)
        self.connections = nn.ModuleList(
            nn.Sequential(*_conv_norm_relu(c_in, c_out, 1, norm), nn.AvgPool2d(2))
            for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.connections):
                x = self.connections[i](x)
        return self.head(x.mean(dim=(2, 3)))

    def smoothness(self) -> torch.Tensor:
        """Sum of the ODE blocks' time-smoothness regularisers (ODEBlock.smoothness)."""
        return sum(block.smoothness() for block in self.blocks)

    def refine(self, n_steps: int | None = None, n_controls: int | None = None) -> "ContinuousResNet":
        """A copy whose ODE blocks are refined (ODEBlock.refine); the other layers are copied unchanged."""
        new = copy.deepcopy(self)
        new.blocks = nn.ModuleList(block.refine(n_steps, n_controls) for block in self.blocks)
        return new
