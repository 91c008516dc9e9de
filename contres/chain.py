"""Right-hand sides as chains of stages (docs/math.md section 8): the stage names, the presets, and the rule that
gives every stage its width and every parameter its name and shape.

A chain is a tuple of stage names applied in order to the state u (C channels):

  conv    a k x k convolution (same padding, stride 1) with its own kernel and bias per control; it maps the
          current width to ``hidden_channels``, except the last conv of the chain when no conv_t follows it,
          which maps back to C. With ``time_channel`` it also reads t as its input channel 0.
  conv_t  the transposed convolution with the kernel of the nearest conv before it (without the time channel);
          it maps back to that conv's input width. No parameters of its own.
  bias    adds a learned per-channel bias (``shift``, ``shift2``, ...).
  norm    the normalisation ``norm`` names ("tv", "group", "instance"); with ``norm_affine`` a learned scale and
          shift after it (``norm_weight``, ``norm_bias``, ``norm_weight2``, ...).
  act     the activation.
  neg     negates.

The chain must end at C. The i-th conv's parameters are ``weight`` and ``bias`` for i = 1, then ``weight2``,
``bias2``, ...; each parameter has the controls as its leading dimension. The same rule is implemented by the
compiled op (csrc/chain.cpp), and the tests hold the two against each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

STAGES = ("conv", "conv_t", "bias", "norm", "act", "neg")
PRESETS = {"single": ("conv", "act"), "double_sym": ("conv", "act", "conv_t", "neg")}
NORMS = ("none", "tv", "group", "instance")
DEFAULT_NORM_EPS = {"none": 1e-3, "tv": 1e-3, "group": 1e-5, "instance": 1e-5}


def stages_of(layer, norm: str = "none") -> tuple:
    """The stages `layer` stands for: a preset's (a norm stage after its conv when norm is not "none"), or the
    tuple of stage names itself, checked."""
    if isinstance(layer, str):
        if layer not in PRESETS:
            raise ValueError(f"layer must be 'single', 'double_sym' or a tuple of stages from {STAGES}, "
                             f"got {layer!r}")
        stages = PRESETS[layer]
        return stages[:1] + ("norm",) + stages[1:] if norm != "none" else stages
    if not isinstance(layer, (tuple, list)):
        raise ValueError(f"layer must be 'single', 'double_sym' or a tuple of stages from {STAGES}, got {layer!r}")
    stages = tuple(layer)
    if not stages:
        raise ValueError("layer is an empty chain; a chain needs at least one 'conv' stage")
    for i, s in enumerate(stages):
        if not isinstance(s, str) or s not in STAGES:
            raise ValueError(f"layer: stage {i} is {s!r}, not one of {STAGES}")
    return stages


def is_preset(layer) -> bool:
    return isinstance(layer, str) and layer in PRESETS


def layer_string(stages: tuple) -> str:
    """The op's name of a chain: its stages joined by commas."""
    return ",".join(stages)


@dataclass(frozen=True)
class ParamSpec:
    name: str    # the module's attribute: weight, bias, weight2, ..., shift, ..., norm_weight, norm_bias, ...
    kind: str    # "kernel", "conv_bias", "shift", "norm_weight", "norm_bias"
    stage: int   # its stage in the chain
    shape: tuple  # one control's

    @property
    def fan_in(self) -> Optional[int]:
        """A kernel's fan-in (input channels times k^2), what nn.Conv2d initialises it by."""
        if self.kind != "kernel":
            return None
        return self.shape[1] * self.shape[2] * self.shape[3]


@dataclass(frozen=True)
class Plan:
    stages: tuple
    params: tuple        # ParamSpec, in the op's order: the first conv's weight and bias, then by stage
    widths: tuple        # the width after each stage
    groups: tuple        # per stage: a group or instance norm's groups, else 0


def _numbered(base: str, i: int) -> str:
    return base if i == 1 else f"{base}{i}"


def make_plan(layer, channels: int, *, hidden_channels: Optional[int] = None, kernel_size: int = 3,
              norm: str = "none", norm_groups: Optional[int] = None, norm_affine: bool = False,
              time_channel: bool = False) -> Plan:
    """Widths, parameters and norm groups of a chain; ValueError naming what is wrong with it."""
    stages = stages_of(layer, norm)
    hidden = channels if hidden_channels is None else hidden_channels
    convs = [i for i, s in enumerate(stages) if s == "conv"]
    if not convs:
        raise ValueError(f"layer {stages} has no 'conv' stage; a right-hand side needs one")
    if "norm" in stages and norm == "none":
        raise ValueError(f"layer {stages} has a norm stage at {stages.index('norm')} but norm='none'; name the "
                         "norm (norm='tv', 'group' or 'instance')")
    last_conv = convs[-1]
    params, widths, groups, conv_stack = [], [], [], []  # conv_stack: (in width, out width, stage) of each conv
    width, n_conv, n_bias, n_norm = channels, 0, 0, 0
    for i, s in enumerate(stages):
        g = 0
        if s == "conv":
            n_conv += 1
            out = channels if i == last_conv and "conv_t" not in stages[i + 1:] else hidden
            in_ = width + 1 if time_channel else width
            pair = [ParamSpec(_numbered("weight", n_conv), "kernel", i, (out, in_, kernel_size, kernel_size)),
                    ParamSpec(_numbered("bias", n_conv), "conv_bias", i, (out,))]
            if n_conv == 1:  # the op's weight and bias, whatever stages come before it
                params[:0] = pair
            else:
                params += pair
            conv_stack.append((width, out, i))
            width = out
        elif s == "conv_t":
            if not conv_stack:
                raise ValueError(f"layer {stages}: stage {i} is a conv_t with no conv before it (a conv_t applies "
                                 "the kernel of the nearest conv before it)")
            src_in, src_out, src_stage = conv_stack[-1]
            if width != src_out:
                raise ValueError(f"layer {stages}: the conv_t at stage {i} applies the kernel of the conv at stage "
                                 f"{src_stage}, which maps to {src_out} channels, but {width} reach it")
            width = src_in
        elif s == "bias":
            n_bias += 1
            params.append(ParamSpec(_numbered("shift", n_bias), "shift", i, (width,)))
        elif s == "norm":
            n_norm += 1
            if norm in ("group", "instance"):
                g = width if norm == "instance" else (norm_groups if norm_groups is not None else min(32, width))
                if width % g:
                    default = "" if norm_groups is not None else " (the default, min(32, width))"
                    raise ValueError(f"norm_groups={g}{default} does not divide the width {width} of the norm at "
                                     f"stage {i} of layer {stages}")
            if norm_affine:
                params.append(ParamSpec(_numbered("norm_weight", n_norm), "norm_weight", i, (width,)))
                params.append(ParamSpec(_numbered("norm_bias", n_norm), "norm_bias", i, (width,)))
        widths.append(width)
        groups.append(g)
    if width != channels:
        raise ValueError(f"layer {stages} ends at {width} channels; it must end at channels={channels} (the last "
                         "conv maps back to it unless a conv_t follows)")
    return Plan(stages, tuple(params), tuple(widths), tuple(groups))


def check_norm_options(norm: str, norm_eps, norm_groups, norm_affine) -> float:
    """norm_eps (None: the norm's default), norm_groups and norm_affine against norm; returns eps."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm_eps is None:
        eps = DEFAULT_NORM_EPS[norm]
    elif isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not norm_eps > 0 \
            or norm_eps == float("inf"):
        raise ValueError(f"norm_eps must be a positive finite number, got {norm_eps!r}")
    else:
        eps = float(norm_eps)
    if norm_groups is not None:
        if isinstance(norm_groups, bool) or not isinstance(norm_groups, int) or norm_groups < 1:
            raise ValueError(f"norm_groups must be an integer >= 1, got {norm_groups!r}")
        if norm != "group":
            raise ValueError(f"norm_groups applies to norm='group' only, got norm={norm!r}")
    if not isinstance(norm_affine, bool):
        raise ValueError(f"norm_affine must be a bool, got {norm_affine!r}")
    if norm_affine and norm == "none":
        raise ValueError("norm_affine needs a norm; norm is 'none'")
    return eps
