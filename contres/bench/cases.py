"""Benchmark cases: what one row group measures (device, layer, shape, integrator, precision) and its inputs."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Optional

import torch

from .. import chain, functional, reference

DEFAULT_ACTIVATION = {"single": "relu", "double_sym": "tanh"}
# Right-hand sides ported from the models people train (README, "Porting a model"): a case's layer name -> the
# block's options. torchdiffeq: the MNIST example's ODE function (one control: time enters by the time channel);
# seed_double_sym: the seed authors' DoubleSymLayer with TvNorm (eps 1e-4) and both biases, as their RKNet trains it.
RECIPES = {
    "torchdiffeq": dict(layer=("norm", "act", "conv", "norm", "act", "conv", "norm"), activation="relu",
                        norm="group", norm_affine=True, time_channel=True),
    "seed_double_sym": dict(layer=("conv", "norm", "bias", "act", "conv_t", "bias", "neg"), activation="relu",
                            norm="tv", norm_eps=1e-4),
}
LAYER_NAMES = reference.LAYERS + tuple(RECIPES)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
SHORT_DTYPE = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "fp16"}

# Default shapes (batch, channels, size) per device; --quick uses the small one everywhere.
DEFAULT_SHAPES = {"cpu": [(32, 32, 32)], "cuda": [(128, 64, 32), (32, 16, 28)]}
QUICK_SHAPE = (8, 16, 16)
# The ported right-hand sides' default CPU shapes: torchdiffeq's MNIST ODE-net (64 channels at 7x7 after its two
# stride-2 convolutions) and a larger image; the seed authors' RKNet block at 32 channels, 32x32.
PORTED_SHAPES = {"torchdiffeq": [(128, 64, 7), (32, 64, 16)], "seed_double_sym": [(32, 32, 32)]}
SEED_RKNET_STEPS = 4
DEFAULT_STEPS = 8
QUICK_STEPS = 4


@dataclasses.dataclass(frozen=True)
class Case:
    device: str
    layer: str
    activation: str
    batch: int
    channels: int
    size: int
    steps: int
    controls: Optional[int] = None  # None: one control per step
    dtype: str = "float32"
    autocast: Optional[str] = None  # None, "bfloat16" or "float16"
    T: float = 1.0
    kernel_size: int = 3
    norm: str = "none"
    channels_last: bool = False  # x and the upstream gradient in channels_last (every method sees the same)
    integrator: str = "euler"  # reference.METHODS: the block's `method=`
    interp: str = "constant"
    # torch.backends.mkldnn.conv.fp32_precision during every call, forward and backward ("bf16": float32
    # convolutions with bf16 math where the CPU has native bf16, the CPU's TF32); None leaves the setting alone
    mkldnn_fp32_precision: Optional[str] = None

    @property
    def n_controls(self) -> int:
        return self.controls or self.steps

    @property
    def recipe(self) -> Optional[dict]:
        """A ported right-hand side's options (RECIPES), or None for a preset layer."""
        return RECIPES.get(self.layer)

    def plan(self) -> chain.Plan:
        r = self.recipe or {}
        return chain.make_plan(r.get("layer", self.layer), self.channels, kernel_size=self.kernel_size,
                               norm=r.get("norm", self.norm), norm_affine=r.get("norm_affine", False),
                               time_channel=r.get("time_channel", False))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def name(self) -> str:
        kind = f"{self.layer}/{self.activation}" + (f"/{self.norm}" if self.norm != "none" else "")
        parts = [kind] + ([self.integrator] if self.integrator != "euler" else [])
        parts += [f"B{self.batch}", f"C{self.channels}", f"{self.size}x{self.size}", f"N{self.steps}"]
        if self.n_controls != self.steps or self.interp != "constant":
            parts.append(f"M{self.n_controls}" + ("-linear" if self.interp == "linear" else ""))
        parts.append(SHORT_DTYPE[self.dtype])
        if self.autocast:
            parts.append(f"autocast-{SHORT_DTYPE[self.autocast]}")
        if self.mkldnn_fp32_precision:
            parts.append(f"mkldnn-{self.mkldnn_fp32_precision}")
        if self.channels_last:
            parts.append("CL")
        return " ".join(parts)

    @property
    def state_bytes(self) -> int:
        """Bytes of one state u (B, C, H, W)."""
        elem = torch.empty((), dtype=self.torch_dtype).element_size()
        return self.batch * self.channels * self.size * self.size * elem

    def block_kwargs(self) -> dict:
        """The keyword arguments every functional.ode_block of this case takes."""
        kw = dict(T=self.T, n_steps=self.steps, layer=self.layer, activation=self.activation, interp=self.interp,
                  norm=self.norm, method=self.integrator)  # a recipe's own norm below
        if self.recipe:
            kw.update(self.recipe)
        return kw

    def reference_kwargs(self) -> dict:
        """The same for reference.ode_block (a ported right-hand side as its Chain)."""
        kw = self.block_kwargs()
        options = {k: kw.pop(k) for k in ("norm_eps", "norm_groups", "norm_affine", "time_channel") if k in kw}
        kw["chain"] = functional.chain_options(kw["layer"], kw["activation"], kw["norm"], options.get("norm_eps"),
                                               options.get("norm_groups"), options.get("norm_affine", False),
                                               options.get("time_channel", False))
        return kw

    def param_names(self) -> list:
        """The names of a ported right-hand side's parameters beyond weight and bias (the op's order)."""
        return [p.name for p in self.plan().params[2:]] if self.recipe else []

    def autocast_context(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=AUTOCAST[self.autocast])

    @contextlib.contextmanager
    def precision_context(self):
        """The case's mkldnn fp32 precision setting, for a forward and its backward (restored after)."""
        if self.mkldnn_fp32_precision is None:
            yield
            return
        conv = torch.backends.mkldnn.conv
        saved = conv.fp32_precision
        conv.fp32_precision = self.mkldnn_fp32_precision
        try:
            yield
        finally:
            conv.fp32_precision = saved


@dataclasses.dataclass
class Inputs:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    grad_out: torch.Tensor  # the upstream gradient used for every backward
    params: tuple = ()      # a ported right-hand side's other parameters (Case.param_names)

    @property
    def leaves(self):
        return (self.x, self.weight, self.bias, *self.params)


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """x, controls (scaled like ODEBlock's initialisation) and an upstream gradient, all requiring grad.
    Drawn in float64 on the CPU, so every device and dtype sees the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    C, k, M = case.channels, case.kernel_size, case.n_controls
    shape = (case.batch, C, case.size, case.size)
    bound = 1.0 / math.sqrt(C * k * k)

    def rand(*size, scale=1.0, uniform=False):
        t = (torch.rand(*size, generator=gen, dtype=torch.float64) * 2 - 1) if uniform else \
            torch.randn(*size, generator=gen, dtype=torch.float64)
        return (scale * t).to(device=case.device, dtype=case.torch_dtype)

    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    x = rand(*shape).contiguous(memory_format=fmt).requires_grad_()
    if not case.recipe:
        weight = rand(M, C, C, k, k, scale=bound, uniform=True).requires_grad_()
        bias = rand(M, C, scale=bound, uniform=True).requires_grad_()
        return Inputs(x, weight, bias, rand(*shape).contiguous(memory_format=fmt))
    params = []  # ODEBlock's initialisation, with norm scales and shifts drawn around 1 and 0
    for spec in case.plan().params:
        if spec.kind == "kernel":
            params.append(rand(M, *spec.shape, scale=1.0 / math.sqrt(spec.fan_in), uniform=True))
        elif spec.kind == "norm_weight":
            params.append(1 + rand(M, *spec.shape, scale=0.1))
        else:
            params.append(rand(M, *spec.shape, scale=bound, uniform=True))
    weight, bias, *rest = (p.requires_grad_() for p in params)
    return Inputs(x, weight, bias, rand(*shape).contiguous(memory_format=fmt), tuple(rest))


def integrators(choice: Optional[str]) -> tuple:
    """The integrators of --method: one, or all of reference.METHODS."""
    return reference.METHODS if choice == "all" else (choice or "euler",)


def make_cases(device: str, args, native_bf16: Optional[bool] = None) -> list:
    """The cases of one device: the default shapes (README, --help) unless shapes or --quick are given, for each
    layer and integrator asked for; the default CUDA run adds single/relu on the large shape under bf16 autocast,
    the default CPU run on a CPU with native bf16 (native_bf16; None: this CPU's, see environment.cpu_info) adds
    each layer under bf16 autocast and in float32 with mkldnn's bf16 fp32 precision."""
    custom_shape = any(v is not None for v in (args.batch, args.channels, args.size))
    if custom_shape or args.quick:
        b0, c0, s0 = QUICK_SHAPE if args.quick else DEFAULT_SHAPES["cpu"][0]
        shapes = [(args.batch or b0, args.channels or c0, args.size or s0)]
    else:
        shapes = DEFAULT_SHAPES[device]
    layers = reference.LAYERS if args.layer in (None, "all") else (args.layer,)
    activation_of = lambda layer: args.activation or (RECIPES[layer]["activation"] if layer in RECIPES  # noqa: E731
                                                      else DEFAULT_ACTIVATION[layer])
    steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    precision = getattr(args, "mkldnn_fp32_precision", None)
    common = dict(controls=args.controls, dtype=args.dtype, norm=args.norm, channels_last=args.channels_last,
                  interp=args.interp)
    is_default = not custom_shape and not args.quick and args.layer is None and args.activation is None \
        and args.steps is None and args.controls is None and args.dtype == "float32" and args.autocast is None \
        and args.norm == "none" and not args.channels_last and args.interp == "constant" and precision is None
    if device == "cpu" and is_default and native_bf16 is None:
        from .environment import cpu_info

        native_bf16 = cpu_info()["native_bf16"]
    cases = []
    for integrator in integrators(args.method):
        cases += [Case(device, layer, activation_of(layer), b, c, s, steps, autocast=args.autocast,
                       integrator=integrator, mkldnn_fp32_precision=precision, **common)
                  for (b, c, s) in shapes for layer in layers]
        if device == "cuda" and is_default:
            b, c, s = DEFAULT_SHAPES["cuda"][0]
            cases.append(Case(device, "single", "relu", b, c, s, DEFAULT_STEPS, autocast="bfloat16",
                              integrator=integrator))
        if device == "cpu" and is_default and native_bf16:
            b, c, s = DEFAULT_SHAPES["cpu"][0]
            for extra in (dict(autocast="bfloat16"), dict(mkldnn_fp32_precision="bf16")):
                cases += [Case(device, layer, DEFAULT_ACTIVATION[layer], b, c, s, DEFAULT_STEPS,
                               integrator=integrator, **extra) for layer in reference.LAYERS]
    if device == "cpu" and is_default:  # the ported right-hand sides at the shapes their models train
        cases += [Case(device, "torchdiffeq", "relu", b, c, s, DEFAULT_STEPS, controls=1, norm="group")
                  for (b, c, s) in PORTED_SHAPES["torchdiffeq"]]
        cases += [Case(device, "seed_double_sym", "relu", b, c, s, SEED_RKNET_STEPS, controls=SEED_RKNET_STEPS // 2,
                       interp="linear", integrator="rk4", norm="tv") for (b, c, s) in PORTED_SHAPES["seed_double_sym"]]
    return cases
