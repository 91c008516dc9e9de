"""ODEBlock: a drop-in nn.Module for an n-step continuous ResNet block."""
from __future__ import annotations

import math

import torch
from torch import nn

from . import functional


class ODEBlock(nn.Module):
    """u' = f(u, theta(t)) on [0, T], integrated with n_steps forward-Euler steps.

    f is ``act(conv(u, K(t)) + b(t))`` (layer="single") or ``-convT(act(conv(u, K(t)) + b(t)), K(t))``
    (layer="double_sym", the stable symmetric layer). The weights live on their own time grid of
    n_controls controls (default: one per step) and are interpolated to the steps ("constant" or "linear").

    Parameters: ``weight`` (n_controls, C, C, k, k) and ``bias`` (n_controls, C).

    Initialisation: every control gets the same draw of nn.Conv2d's default initialisation (uniform with
    bound 1/sqrt(fan_in) for the bias, kaiming-uniform with a = sqrt(5) for the kernel). The block therefore
    starts as a time-invariant ODE whose right-hand side has the scale of an ordinary convolution layer, the
    step size h = T / n_steps keeps each update small, and the time-smoothness of the controls is exact at
    the start (refining the grids does not change the function).

    backend: "auto" | "fused" | "reference" (see contres.functional.ode_block).
    checkpoint: False, True (keep every ceil(sqrt(n_steps))-th state) or a stride; lowers the memory held
    between forward and backward at the cost of recomputing the forward in the backward.
    """

    def __init__(self, channels: int, n_steps: int = 4, n_controls: int | None = None, T: float = 1.0,
                 layer: str = "single", activation: str = "relu", interp: str = "constant", kernel_size: int = 3,
                 backend: str = "auto", checkpoint=False, device=None, dtype=None):
        super().__init__()
        functional._check_positive_int("channels", channels)
        functional._check_positive_int("n_steps", n_steps)
        if n_controls is None:
            n_controls = n_steps
        functional._check_positive_int("n_controls", n_controls)
        functional._check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (1, 3, 5, 7, ...), got {kernel_size}")
        if isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) or T <= 0:
            raise ValueError(f"T must be a positive finite number, got {T!r}")
        functional._check_choice("layer", layer, functional.LAYERS)
        functional._check_choice("activation", activation, functional.ACTIVATIONS)
        functional._check_choice("interp", interp, functional.INTERPS)
        functional._check_choice("backend", backend, functional.BACKENDS)
        functional.checkpoint_stride(checkpoint, n_steps)
        self.channels, self.n_steps, self.n_controls, self.T = channels, n_steps, n_controls, float(T)
        self.layer, self.activation, self.interp = layer, activation, interp
        self.kernel_size, self.backend, self.checkpoint = kernel_size, backend, checkpoint
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(n_controls, channels, channels, kernel_size, kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(n_controls, channels, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            w0 = torch.empty_like(self.weight[0])
            nn.init.kaiming_uniform_(w0, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(self.channels * self.kernel_size ** 2)
            b0 = torch.empty_like(self.bias[0]).uniform_(-bound, bound)
            self.weight.copy_(w0.expand_as(self.weight))
            self.bias.copy_(b0.expand_as(self.bias))

    @property
    def h(self) -> float:
        return self.T / self.n_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.ode_block(x, self.weight, self.bias, T=self.T, n_steps=self.n_steps, layer=self.layer,
                                    activation=self.activation, interp=self.interp, backend=self.backend,
                                    checkpoint=self.checkpoint)

    def extra_repr(self) -> str:
        return (f"{self.channels}, n_steps={self.n_steps}, n_controls={self.n_controls}, T={self.T}, "
                f"layer={self.layer!r}, activation={self.activation!r}, interp={self.interp!r}, "
                f"kernel_size={self.kernel_size}, backend={self.backend!r}, checkpoint={self.checkpoint}")
