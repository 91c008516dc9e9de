"""Functional API: ode_block(x, weight, bias, *, T, n_steps, ...)."""
from __future__ import annotations

import math
import warnings

import torch

from . import _ext, adjoint, chain, ops, reference
from .reference import ACTIVATIONS, INTERPS, LAYERS, MEMORIES, METHODS, NORMS

BACKENDS = ("auto", "fused", "reference")
GRADIENTS = ("discrete", "continuous")
INFERENCE_MEMORY = "none"  # the ops' memory mode of a forward no backward follows: it keeps nothing
AUTOCAST_STATES = ("float32", "reduced")
_warned_fallback: set = set()


def _check_choice(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _check_final_time(T) -> None:
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) or T <= 0:
        raise ValueError(f"T must be a positive finite number, got {T!r}")


def checkpoint_stride(checkpoint, n_steps: int) -> int:
    """0 (keep everything) or the stride s of saved states: True -> ceil(sqrt(n_steps))."""
    if checkpoint is False or checkpoint is None or checkpoint == 0:
        return 0
    if checkpoint is True:
        return max(1, math.ceil(math.sqrt(n_steps)))
    if isinstance(checkpoint, int) and checkpoint >= 1:
        return checkpoint
    raise ValueError(f"checkpoint must be a bool or an integer stride >= 1, got {checkpoint!r}")


def check_method(method, memory, checkpoint=False) -> None:
    """method and memory, and that they go together (and with checkpoint)."""
    _check_choice("method", method, METHODS)
    _check_choice("memory", memory, MEMORIES)
    if memory == "reversible":
        if method != "leapfrog":
            raise ValueError(f"memory='reversible' needs method='leapfrog' (the only reversible integrator), "
                             f"got method={method!r}")
        if checkpoint not in (False, None, 0):
            raise ValueError(f"memory='reversible' keeps no intermediate states, so it takes no checkpoint; "
                             f"got checkpoint={checkpoint!r}")


def _check_layer(layer) -> None:
    if isinstance(layer, str):
        _check_choice("layer", layer, LAYERS)
    else:
        chain.stages_of(layer)


def chain_options(layer, activation: str, norm: str, norm_eps, norm_groups, norm_affine, time_channel):
    """The reference's Chain for these arguments, or None when they are a preset's (the presets' own rhs)."""
    eps = chain.check_norm_options(norm, norm_eps, norm_groups, norm_affine)
    if not isinstance(time_channel, bool):
        raise ValueError(f"time_channel must be a bool, got {time_channel!r}")
    preset = chain.is_preset(layer) and norm in ("none", "tv") and eps == reference.TV_EPS and not norm_affine \
        and not time_channel and activation != "softplus"
    if preset:
        return None
    return reference.Chain(chain.stages_of(layer, norm), activation, norm, eps, norm_groups, norm_affine,
                           time_channel)


def _first_conv_maps_to_hidden(stages: tuple) -> bool:
    convs = [i for i, s in enumerate(stages) if s == "conv"]
    return len(convs) > 1 or "conv_t" in stages[convs[0] + 1:] if convs else False


def validate(x, weight, bias, *, T, n_steps, layer, activation, interp, backend, norm="none", method="euler",
             memory="states", checkpoint=False, params=None, norm_eps=None, norm_groups=None, norm_affine=False,
             time_channel=False) -> list:
    """Raise a clear error naming the bad argument; never touches the tensors' data. Returns the chain's other
    parameters (params, a dict by name) in the op's order."""
    _check_layer(layer)
    _check_choice("activation", activation, ACTIVATIONS)
    _check_choice("interp", interp, INTERPS)
    _check_choice("norm", norm, NORMS)
    _check_choice("backend", backend, BACKENDS)
    check_method(method, memory, checkpoint)
    _check_positive_int("n_steps", n_steps)
    _check_final_time(T)
    chain.check_norm_options(norm, norm_eps, norm_groups, norm_affine)
    if not isinstance(time_channel, bool):
        raise ValueError(f"time_channel must be a bool, got {time_channel!r}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (batch, channels, height, width), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    C = x.shape[1]
    if weight.dim() != 5 or weight.shape[3] != weight.shape[4]:
        raise ValueError(f"weight must have shape (n_controls, out, in, k, k) for x with {C} channels, "
                         f"got {tuple(weight.shape)}")
    k = weight.shape[-1]
    if k % 2 == 0:
        raise ValueError(f"weight's kernel size must be odd (1, 3, 5, 7, ...), got {k}")
    stages = chain.stages_of(layer, norm)
    hidden = weight.shape[1] if _first_conv_maps_to_hidden(stages) else C
    plan = chain.make_plan(layer, C, hidden_channels=hidden, kernel_size=k, norm=norm, norm_groups=norm_groups,
                           norm_affine=norm_affine, time_channel=time_channel)
    M = weight.shape[0]
    if M < 1:
        raise ValueError("weight must hold at least one control (n_controls >= 1)")
    want_w = (M, *plan.params[0].shape)
    if tuple(weight.shape) != want_w:
        raise ValueError(f"weight must have shape {want_w} = (n_controls, out, in, k, k) for x with {C} channels "
                         f"and this layer, got {tuple(weight.shape)}")
    if bias.dim() != 2 or tuple(bias.shape) != (M, *plan.params[1].shape):
        raise ValueError(f"bias must have shape (n_controls, channels) = ({M}, {plan.params[1].shape[0]}), got "
                         f"{tuple(bias.shape)}")
    given = {} if params is None else params
    if not isinstance(given, dict):
        raise TypeError(f"params must be a dict of the chain's other parameters by name, got {type(given).__name__}")
    names = [spec.name for spec in plan.params[2:]]
    missing, unexpected = [n for n in names if n not in given], [n for n in given if n not in names]
    if missing or unexpected:
        raise ValueError(f"params must hold exactly the chain's other parameters {names}; missing {missing}, "
                         f"unexpected {unexpected}")
    ordered = []
    for spec in plan.params[2:]:
        t = given[spec.name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"params[{spec.name!r}] must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != (M, *spec.shape):
            raise ValueError(f"params[{spec.name!r}] (stage {spec.stage}, {spec.kind}) must have shape "
                             f"{(M, *spec.shape)}, got {tuple(t.shape)}")
        ordered.append(t)
    for name, t in (("weight", weight), ("bias", bias), *((f"params[{s.name!r}]", t)
                                                          for s, t in zip(plan.params[2:], ordered))):
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}; they must match")
        if t.device != x.device:
            raise RuntimeError(f"{name} is on {t.device} but x is on {x.device}; they must be on one device")
    return ordered


def _under_grad_transform() -> bool:
    """Inside torch.func.grad / vjp / jacrev / jvp / hessian, which the compiled ops' autograd (torch.library's
    register_autograd) does not support; vmap alone is fine."""
    if torch.compiler.is_compiling() or not torch._C._are_functorch_transforms_active():
        return False
    try:
        from torch._C._functorch import TransformType
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

        return any(i.key() in (TransformType.Grad, TransformType.Jvp) for i in retrieve_all_functorch_interpreters())
    except (ImportError, AttributeError):  # private API moved: assume the worst, the reference serves all
        return True


def _fused_unavailable(device: torch.device):
    """Why the fused ops cannot serve this device, or None when they can (every norm has fused kernels on every
    device with kernels)."""
    if not _ext.has_kernels(device.type):
        return _ext.LOAD_ERROR or f"this build of contres has no {device.type} kernels ({_ext.build_info()})"
    return None


def resolve_backend(backend: str, device: torch.device, norm: str = "none") -> str:
    """'fused' or 'reference' for this device and norm (see ode_block)."""
    if backend == "reference":
        return "reference"
    reason = _fused_unavailable(device)
    if backend == "fused":
        if reason is not None:
            raise RuntimeError(f"backend='fused' is not available for device {device}: {reason}")
        if _under_grad_transform():
            raise RuntimeError("backend='fused' cannot run under torch.func.grad / vjp / jacrev / jvp: torch.library "
                               "custom ops do not support these transforms; use backend='auto' (which falls back "
                               "to the reference there) or backend='reference'. vmap alone works with 'fused'.")
        return "fused"
    if reason is not None:
        key = (device.type, norm)
        if key not in _warned_fallback:
            _warned_fallback.add(key)
            warnings.warn(f"contres: no fused kernels for {device.type} ({reason}); using the reference "
                          "implementation", RuntimeWarning, stacklevel=3)
        return "reference"
    if _under_grad_transform():
        if "func" not in _warned_fallback:
            _warned_fallback.add("func")
            warnings.warn("contres: torch.func.grad / vjp / jacrev / jvp cannot run the fused ops; using the "
                          "reference implementation under these transforms", RuntimeWarning, stacklevel=3)
        return "reference"
    return "fused"


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")  # a literal: torch.compile traces it on every torch


def _autocast_inputs(x, weight, bias, autocast_state: str = "float32", params=None):
    """(x, weight, bias, conv_dtype): the block's inputs under torch.autocast, and the dtype its convolutions run
    in when that differs from the state's (None otherwise).

    autocast_state="float32" (the default) gives plain per-op autocast's numerics: on the CPU, with float32 x, the
    state stays float32 and only the convolutions run in the autocast dtype (conv_dtype; the fused op's mixed
    precision, the reference under autocast itself). "reduced" runs the whole block in the autocast dtype (x,
    weight and bias cast; the fused kernels still accumulate in float). CUDA, and x that is not float32, always
    take "reduced": the CUDA passes take one dtype. The casts are differentiable, so the gradients come back in
    the inputs' dtypes."""
    if (not isinstance(x, torch.Tensor) or x.device.type not in _AUTOCAST_DEVICES
            or not torch.is_autocast_enabled(x.device.type)):
        return x, weight, bias, params, None
    dtype = torch.get_autocast_dtype(x.device.type)
    names = list(params) if isinstance(params, dict) else []
    if autocast_state == "float32" and x.device.type == "cpu" and x.dtype == torch.float32:
        low = (torch.bfloat16, torch.float16)  # low-precision parameters: interpolated in float32, like x
        cast = lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype in low else t  # noqa: E731
        out = [cast(t) for t in (weight, bias, *(params[n] for n in names))]
        return (x, out[0], out[1], dict(zip(names, out[2:])) if isinstance(params, dict) else params, dtype)
    cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    out = [cast(t) for t in (x, weight, bias, *(params[n] for n in names))]
    return (*out[:3], dict(zip(names, out[3:])) if isinstance(params, dict) else params, None)


def needs_grad(*tensors) -> bool:
    """Whether autograd will record a call on these tensors: grad mode is on (not no_grad, not inference_mode)
    and one of them requires grad. torch.compile traces (and guards on) both."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def ode_block(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, T: float = 1.0, n_steps: int,
              layer="single", activation: str = "relu", interp: str = "constant", backend: str = "auto",
              checkpoint=False, gradient: str = "discrete", norm: str = "none", method: str = "euler",
              memory: str = "states", autocast_state: str = "float32", params=None, norm_eps=None,
              norm_groups=None, norm_affine: bool = False, time_channel: bool = False) -> torch.Tensor:
    """n_steps steps of the method for du/dt = f(u, theta(t)) on [0, T] (docs/math.md).

    x: (B, C, H, W); weight: controls (n_controls, C, C, k, k); bias: (n_controls, C).
    layer: "single", "double_sym", or a tuple of stages (contres.chain: "conv", "conv_t", "bias", "norm", "act",
    "neg"), applied in order; then weight and bias are the first conv's and `params` a dict of the chain's other
    parameters by name (weight2, bias2, shift, norm_weight, ...; contres.chain.make_plan gives their shapes), each
    with the controls as its leading dimension.
    method: 'euler' (forward Euler), 'rk4' (classic Runge-Kutta; the controls are interpolated at every stage
    time, so with interp='constant' and several controls stage 4 of a step ending at a switch already sees the next
    control, which makes it first-order accurate: docs/math.md 4.5), or 'leapfrog' (u_{k+1} = 2 u_k - u_{k-1}
    + h^2 f(u_k), u_{-1} = u_0: the hyperbolic network u'' = f, reversible; first-order accurate from this start,
    see docs/math.md 4.5).
    backend: 'fused' (compiled ops; error when not built for x's device), 'reference' (PyTorch autograd),
    'auto' (fused where available, else the reference with one warning).
    checkpoint: False keeps every state for the backward; True or a stride s keeps every s-th state and
    recomputes the rest in the backward (fused backend only; the reference uses plain autograd).
    memory: 'states' (default: what checkpoint says), or 'reversible' (leapfrog only, fused backend): the forward
    keeps u_{N-1} and u_N alone and the backward recomputes u_{k-1} = 2 u_k - u_{k+1} + h^2 f(u_k) (and each
    step's kernel from the controls) as it walks back, so activation memory does not grow with n_steps; exact in
    exact arithmetic, it drifts by rounding (contres.ops.last_reversible_drift() reports the recomputed u_0
    against x). Whatever memory and checkpoint say, a fused call that no gradient can flow through (grad mode off,
    inference_mode, or no input requiring grad) keeps nothing: each state is written over one before it (Euler
    keeps one buffer, leapfrog and rk4 two, rk4 also two for its stages), and it returns the output alone.
    gradient: 'discrete' (the exact gradient of this discrete network, Discretize-Optimize) or 'continuous'
    (Optimize-Discretize, euler and the presets only: the adjoint ODE solved backward with its own Euler steps, see
    contres.adjoint; an O(h) approximation for comparisons, computed with the reference step function whatever
    the backend, and ignoring checkpoint).
    norm: 'none'; 'tv' (each pixel's channel vector divided by its length, z / sqrt(sum_c z^2 + norm_eps)),
    'group' (per sample and group of channels, as torch.nn.functional.group_norm, norm_groups groups, default
    min(32, width)) or 'instance' (one group per channel): a norm stage of the chain; the presets put one after
    their conv. norm_eps: None (1e-3 for tv, 1e-5 for group and instance) or > 0. norm_affine: a learned
    per-channel scale and shift after each norm. time_channel: every conv also reads t, the stage time, as a
    constant input channel 0 (zero-padded like the rest: torch.cat([t * 1, z], 1)).
    autocast_state: what torch.autocast does to the block. 'float32' (default): what it does to the convolutions
    and adds the block is made of, per op -- on the CPU, with float32 x, the state u stays float32 and the output
    is float32, the convolutions run in the autocast dtype (bf16 or fp16) with float accumulation, and the
    backward keeps their low-precision inputs (the fused op's mixed precision). 'reduced': the whole block in the
    autocast dtype (x, weight, bias cast; the output in that dtype), about 2x the error of 'float32' (README,
    "Mixed precision"). CUDA takes 'reduced' either way (its fused passes take one dtype). Ignored without
    autocast.
    """
    _check_choice("autocast_state", autocast_state, AUTOCAST_STATES)
    x, weight, bias, params, conv_dtype = _autocast_inputs(x, weight, bias, autocast_state, params)
    ordered = validate(x, weight, bias, T=T, n_steps=n_steps, layer=layer, activation=activation, interp=interp,
                       backend=backend, norm=norm, method=method, memory=memory, checkpoint=checkpoint,
                       params=params, norm_eps=norm_eps, norm_groups=norm_groups, norm_affine=norm_affine,
                       time_channel=time_channel)
    spec = chain_options(layer, activation, norm, norm_eps, norm_groups, norm_affine, time_channel)
    _check_choice("gradient", gradient, GRADIENTS)
    stride = checkpoint_stride(checkpoint, n_steps)
    differentiable = needs_grad(x, weight, bias, *ordered)
    if gradient == "continuous" and (method != "euler" or spec is not None):
        raise ValueError(f"gradient='continuous' solves Euler's adjoint ODE of a preset; it is defined for "
                         f"method='euler' only, and the presets 'single' and 'double_sym' (norm 'none' or 'tv'), got "
                         f"method={method!r}, layer={layer!r} (use gradient='discrete')")
    if gradient == "continuous" and differentiable:  # without a gradient to take, the forward is the same
        if _under_grad_transform():
            raise RuntimeError("gradient='continuous' cannot run under torch.func.grad / vjp / jacrev / jvp: its "
                               "backward solves the adjoint with torch.autograd; use torch.autograd.grad / "
                               ".backward(), or gradient='discrete'")
        return adjoint.ode_block_continuous(x, weight, bias, T=float(T), n_steps=n_steps, layer=layer,
                                            activation=activation, interp=interp, norm=norm)
    if resolve_backend(backend, x.device, norm) == "reference":
        return reference.ode_block(x, weight, bias, T=T, n_steps=n_steps, layer=layer, activation=activation,
                                   interp=interp, norm=norm, method=method, params=ordered, chain=spec)
    if not differentiable:
        memory, stride = INFERENCE_MEMORY, 0
    op_layer = layer if isinstance(layer, str) else chain.layer_string(tuple(layer))
    return ops.ode_forward(x, weight, bias, float(T) / n_steps, op_layer, activation, stride, norm, method, memory,
                           interp, n_steps, conv_dtype, ordered, norm_eps, norm_groups or 0, norm_affine,
                           time_channel)[0]
