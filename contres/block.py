"""ODEBlock: a drop-in nn.Module for an n-step continuous ResNet block."""
from __future__ import annotations

import math

import torch
from torch import nn

from . import chain, functional, reference


class ODEBlock(nn.Module):
    """u' = f(u, theta(t)) on [0, T], integrated with n_steps steps of `method` (forward Euler by default).

    f is ``act(conv(u, K(t)) + b(t))`` (layer="single") or ``-convT(act(conv(u, K(t)) + b(t)), K(t))``
    (layer="double_sym", the stable symmetric layer). The weights live on their own time grid of
    n_controls controls (default: one per step) and are interpolated to the steps ("constant" or "linear").

    Parameters: ``weight`` (n_controls, C, C, k, k) and ``bias`` (n_controls, C).

    layer may also be a tuple of stages, a chain (contres.chain: "conv", "conv_t", "bias", "norm", "act",
    "neg"), applied in order; the i-th conv's parameters are ``weight``/``bias`` (i = 1), ``weight2``/``bias2``,
    ...; the bias stages' ``shift``, ``shift2``, ...; with norm_affine each norm's ``norm_weight``/``norm_bias``,
    ``norm_weight2``/``norm_bias2``, ... . Each conv maps to hidden_channels (default: channels) except the last one
    when no conv_t follows it. norm: "none", "tv", "group" (norm_groups, default min(32, width)) or "instance";
    norm_eps (default 1e-3 for tv, 1e-5 for group and instance); time_channel: every conv also reads t as its
    input channel 0. README ("Porting a model") has the recipes for DynamicBlocks' layers and torchdiffeq's
    ODE function.

    Initialisation: every control gets the same draw of nn.Conv2d's default initialisation (uniform with
    bound 1/sqrt(fan_in) for each conv's bias, kaiming-uniform with a = sqrt(5) for its kernel; shifts 0, norm
    scales 1 and norm shifts 0). The block therefore
    starts as a time-invariant ODE whose right-hand side has the scale of an ordinary convolution layer, the
    step size h = T / n_steps keeps each update small, and the time-smoothness of the controls is exact at
    the start (refining the grids does not change the function).

    method: "euler" | "rk4" | "leapfrog" (the second-order ODE u'' = f, reversible); see
    contres.functional.ode_block and docs/math.md (section 4.5: the orders of accuracy).
    memory: "states" or, with leapfrog, "reversible" (the backward recomputes the states it walks back through:
    activation memory independent of n_steps).
    backend: "auto" | "fused" | "reference" (see contres.functional.ode_block).
    checkpoint: False, True (keep every ceil(sqrt(n_steps))-th state) or a stride; lowers the memory held
    between forward and backward at the cost of recomputing the forward in the backward.
    gradient: "discrete" (exact) or "continuous" (Optimize-Discretize, see contres.adjoint).
    norm: "none", or "tv": each pixel's channel vector of conv(u, K) + b is divided by its length,
    z / sqrt(sum_c z^2 + eps) with eps = contres.reference.TV_EPS, before the activation.
    autocast_state: under torch.autocast, "float32" (default: the state stays float32 and the convolutions run in
    the autocast dtype, as plain per-op autocast does) or "reduced" (the whole block in the autocast dtype); see
    contres.functional.ode_block.

    Multilevel training: ``smoothness()`` is the time-smoothness regulariser of the controls, ``refine()``
    returns the block on other time grids with the same function of time.
    """

    def __init__(self, channels: int, n_steps: int = 4, n_controls: int | None = None, T: float = 1.0,
                 layer="single", activation: str = "relu", interp: str = "constant", kernel_size: int = 3,
                 backend: str = "auto", checkpoint=False, device=None, dtype=None, *, gradient: str = "discrete",
                 norm: str = "none", method: str = "euler", memory: str = "states",
                 autocast_state: str = "float32", hidden_channels: int | None = None, norm_eps=None,
                 norm_groups: int | None = None, norm_affine: bool = False, time_channel: bool = False):
        super().__init__()
        functional._check_positive_int("channels", channels)
        functional._check_positive_int("n_steps", n_steps)
        if n_controls is None:
            n_controls = n_steps
        functional._check_positive_int("n_controls", n_controls)
        functional._check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (1, 3, 5, 7, ...), got {kernel_size}")
        if hidden_channels is not None:
            functional._check_positive_int("hidden_channels", hidden_channels)
        functional._check_final_time(T)
        functional._check_layer(layer)
        functional._check_choice("activation", activation, functional.ACTIVATIONS)
        functional._check_choice("interp", interp, functional.INTERPS)
        functional._check_choice("backend", backend, functional.BACKENDS)
        functional._check_choice("gradient", gradient, functional.GRADIENTS)
        functional._check_choice("norm", norm, functional.NORMS)
        functional._check_choice("autocast_state", autocast_state, functional.AUTOCAST_STATES)
        functional.checkpoint_stride(checkpoint, n_steps)
        functional.check_method(method, memory, checkpoint)
        spec = functional.chain_options(layer, activation, norm, norm_eps, norm_groups, norm_affine, time_channel)
        if gradient == "continuous" and (method != "euler" or spec is not None):
            raise ValueError(f"gradient='continuous' is defined for method='euler' only, and the presets (norm "
                             f"'none' or 'tv'), got method={method!r}, layer={layer!r}")
        self.plan = chain.make_plan(layer, channels, hidden_channels=hidden_channels, kernel_size=kernel_size,
                                    norm=norm, norm_groups=norm_groups, norm_affine=norm_affine,
                                    time_channel=time_channel)
        self.gradient, self.norm, self.method, self.memory = gradient, norm, method, memory
        self.autocast_state = autocast_state
        self.channels, self.n_steps, self.n_controls, self.T = channels, n_steps, n_controls, float(T)
        self.layer = layer if isinstance(layer, str) else tuple(layer)
        self.activation, self.interp = activation, interp
        self.kernel_size, self.backend, self.checkpoint = kernel_size, backend, checkpoint
        self.hidden_channels, self.norm_eps, self.norm_groups = hidden_channels, norm_eps, norm_groups
        self.norm_affine, self.time_channel = norm_affine, time_channel
        factory = {"device": device, "dtype": dtype}
        for p in self.plan.params:
            setattr(self, p.name, nn.Parameter(torch.empty(n_controls, *p.shape, **factory)))
        self.reset_parameters()

    def _params(self) -> list:
        return [getattr(self, p.name) for p in self.plan.params]

    def _chain_params(self) -> dict:
        return {p.name: getattr(self, p.name) for p in self.plan.params[2:]}

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for p in self.plan.params:
                param = getattr(self, p.name)
                if p.kind == "kernel":
                    first = torch.empty_like(param[0])
                    nn.init.kaiming_uniform_(first, a=math.sqrt(5))
                elif p.kind == "conv_bias":
                    bound = 1.0 / math.sqrt(self.plan.params[self.plan.params.index(p) - 1].fan_in)
                    first = torch.empty_like(param[0]).uniform_(-bound, bound)
                elif p.kind == "norm_weight":
                    first = torch.ones_like(param[0])
                else:  # shifts, norm shifts
                    first = torch.zeros_like(param[0])
                param.copy_(first.expand_as(param))

    @property
    def h(self) -> float:
        return self.T / self.n_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.ode_block(x, self.weight, self.bias, T=self.T, n_steps=self.n_steps, layer=self.layer,
                                    activation=self.activation, interp=self.interp, backend=self.backend,
                                    checkpoint=self.checkpoint, gradient=self.gradient, norm=self.norm,
                                    method=self.method, memory=self.memory, autocast_state=self.autocast_state,
                                    params=self._chain_params(), norm_eps=self.norm_eps,
                                    norm_groups=self.norm_groups, norm_affine=self.norm_affine,
                                    time_channel=self.time_channel)

    @property
    def control_spacing(self) -> float:
        """dtau, the time between neighbouring controls: T/(M-1) between the nodes of linear controls, T/M
        between the centres of the intervals that constant controls own."""
        if self.interp == "linear" and self.n_controls > 1:
            return self.T / (self.n_controls - 1)
        return self.T / self.n_controls

    def smoothness(self) -> torch.Tensor:
        """sum_j ||theta_{j+1} - theta_j||^2 / dtau over every parameter (kernels, biases, shifts, norm scales),
        a differentiable scalar.

        The squared H^1 seminorm of the controls as a function of time (int ||theta'||^2 dt with a forward
        difference), the regulariser R(theta) of multilevel training; zero for a single control."""
        total = sum((p[1:] - p[:-1]).square().sum() for p in self._params())
        return total / self.control_spacing

    def refine(self, n_steps: int | None = None, n_controls: int | None = None) -> "ODEBlock":
        """A new block on other grids (None keeps the current one) with the old controls' function of time.

        The new controls sample the old interpolant theta(t) where the new grid anchors its controls: at the
        nodes j T/(M'-1) for linear controls, at the start j T/M' of the interval each owns for constant ones.
        So n_controls unchanged keeps the function; refining by an integer factor (constant) or on nested nodes
        (linear, M'-1 a multiple of M-1) represents the same piecewise function exactly; coarsening samples it.
        Everything else (T, layer, activation, interp, backend, ...) is copied; the parameters are new leaves.
        """
        n_steps = self.n_steps if n_steps is None else n_steps
        n_controls = self.n_controls if n_controls is None else n_controls
        new = ODEBlock(self.channels, n_steps, n_controls, self.T, self.layer, self.activation, self.interp,
                       self.kernel_size, self.backend, self.checkpoint, device=self.weight.device,
                       dtype=self.weight.dtype, gradient=self.gradient, norm=self.norm, method=self.method,
                       memory=self.memory, autocast_state=self.autocast_state, hidden_channels=self.hidden_channels,
                       norm_eps=self.norm_eps, norm_groups=self.norm_groups, norm_affine=self.norm_affine,
                       time_channel=self.time_channel)
        R = resample_matrix(self.n_controls, n_controls, self.interp, dtype=self.weight.dtype,
                            device=self.weight.device)
        with torch.no_grad():
            for old, fresh in zip(self._params(), new._params()):
                fresh.copy_(torch.einsum("ij,j...->i...", R, old))
        new.train(self.training)
        return new

    def extra_repr(self) -> str:
        gradient = "" if self.gradient == "discrete" else f", gradient={self.gradient!r}"
        gradient += "" if self.norm == "none" else f", norm={self.norm!r}"
        gradient += "" if self.method == "euler" else f", method={self.method!r}"
        gradient += "" if self.memory == "states" else f", memory={self.memory!r}"
        gradient += "" if self.autocast_state == "float32" else f", autocast_state={self.autocast_state!r}"
        for name in ("hidden_channels", "norm_eps", "norm_groups"):
            gradient += "" if getattr(self, name) is None else f", {name}={getattr(self, name)!r}"
        gradient += ", norm_affine=True" if self.norm_affine else ""
        gradient += ", time_channel=True" if self.time_channel else ""
        return (f"{self.channels}, n_steps={self.n_steps}, n_controls={self.n_controls}, T={self.T}, "
                f"layer={self.layer!r}, activation={self.activation!r}, interp={self.interp!r}, "
                f"kernel_size={self.kernel_size}, backend={self.backend!r}, checkpoint={self.checkpoint}"
                f"{gradient}")


def resample_matrix(old_controls: int, new_controls: int, interp: str, *, dtype=torch.float64,
                    device=None) -> torch.Tensor:
    """R (new, old): new control i = sum_j R[i, j] theta_j, the old interpolant at new control i's anchor time.

    Anchors are i T/M' (constant, or linear with M' = 1) and the nodes i T/(M'-1) (linear); the old interpolant
    at the times k T/n, k < n, is exactly the rows of reference.interpolation_matrix(n, M, interp), and the last
    linear node, T, is the last old control.
    """
    if interp == "constant" or new_controls == 1:
        return reference.interpolation_matrix(new_controls, old_controls, interp, dtype=dtype, device=device)
    R = reference.interpolation_matrix(new_controls - 1, old_controls, interp, dtype=dtype, device=device)
    last = torch.zeros(1, old_controls, dtype=dtype, device=device)
    last[0, -1] = 1.0
    return torch.cat([R, last])
