"""Typed wrappers of the compiled ops and their autograd.

torch.ops.contres.ode_forward(x, weight, bias, h, layer, activation, checkpoint, norm="none", method="euler",
    memory="states", interp="none", n_steps=0, conv_dtype=None, params=[], norm_eps=None, norm_groups=0,
    norm_affine=False, time_channel=False) -> (u_N, states, aux)
torch.ops.contres.ode_backward(grad_out, x, weight, bias, states, aux, h, layer, activation, checkpoint,
    norm="none", method="euler", memory="states", interp="none", n_steps=0, conv_dtype=None, params=[],
    norm_eps=None, norm_groups=0, norm_affine=False, time_channel=False)
    -> (grad_x, grad_weight, grad_bias, drift, grad_params)

layer: "single", "double_sym", or a chain of stages joined by commas ("conv,norm,act", contres.chain): then weight
and bias are the first conv's and params the chain's other parameters in order, each with the same rows; norm_eps
(None: the norm's default), norm_groups (0: min(32, width)), norm_affine and time_channel its options. `aux` is a
list: one tensor per kept slot (a preset keeps at most one).

With interp="none", weight (rows, C, C, k, k) and bias (rows, C) are the kernels at the method's stage times
(already interpolated: rows = N, or 2N + 1 for rk4, see reference.stage_times). With interp="constant" or
"linear" they are the controls (M, C, C, k, k) and (M, C), which the op interpolates itself at the stage times of
n_steps steps (reference.interpolation_matrix's rule), so that nothing per stage time is kept for the backward,
which returns the controls' gradients. h = T / N; weight and bias have x's dtype. conv_dtype (CPU, float32 x):
torch.bfloat16 or torch.float16 for mixed precision, what torch.autocast does per op -- the state, the output and
every gradient stay float32, the weights are cast once per call and the convolutions run in conv_dtype with float
accumulation. What the forward keeps for the backward (`states`, `aux`) is defined once, in the extension
(csrc/config.h and csrc/saved.h, explained in docs/math.md); the backward checks that it is handed exactly that,
and the extension's Meta kernels give torch.compile and torch.export the same shapes. memory="none" keeps nothing
(a forward no backward follows). `drift` is max |u_0 recomputed - x| / max |x| of a memory="reversible" backward
(0 otherwise).
"""
from __future__ import annotations

import contextlib

import torch

from . import _ext, reference

_LAST_DRIFT: list = [None]


def ode_forward(x, weight, bias, h: float, layer: str, activation: str, checkpoint: int, norm: str = "none",
                method: str = "euler", memory: str = "states", interp: str = "none", n_steps: int = 0,
                conv_dtype=None, params=(), norm_eps=None, norm_groups: int = 0, norm_affine: bool = False,
                time_channel: bool = False):
    return torch.ops.contres.ode_forward(x, weight, bias, h, layer, activation, checkpoint, norm, method, memory,
                                         interp, n_steps, conv_dtype, list(params), norm_eps, norm_groups,
                                         norm_affine, time_channel)


def ode_backward(grad_out, x, weight, bias, states, aux, h: float, layer: str, activation: str, checkpoint: int,
                 norm: str = "none", method: str = "euler", memory: str = "states", interp: str = "none",
                 n_steps: int = 0, conv_dtype=None, params=(), norm_eps=None, norm_groups: int = 0,
                 norm_affine: bool = False, time_channel: bool = False):
    return torch.ops.contres.ode_backward(grad_out, x, weight, bias, states, list(aux), h, layer, activation,
                                          checkpoint, norm, method, memory, interp, n_steps, conv_dtype, list(params),
                                          norm_eps, norm_groups, norm_affine, time_channel)


def last_paths() -> dict:
    """What the latest forward and backward op calls on this thread ran: "cpu:aten" or "cpu:own" (set_cpu_paths),
    "cuda:aten" (cuDNN convolutions
    and the fused elementwise passes, step by step), "cuda:fused" (the fused cuDNN graphs), with "+graph" when
    replayed from a CUDA graph of the whole call; "none" before the first call."""
    _require_ext()
    return dict(_ext._C.last_paths())


def set_cuda_paths(conv: str = "auto", graphs: str = "auto") -> None:
    """Choose how CUDA calls run (for every thread; environment: CONTRES_CUDA_CONV, CONTRES_CUDA_GRAPHS).

    conv: "aten" (cuDNN through ATen, plus contres' elementwise passes), "fused" (the convolution and its
    elementwise work as one runtime-compiled cuDNN graph where cuDNN supports it; ATen elsewhere), or "auto".
    graphs: "on" (replay each call from a CUDA graph captured on its second call; the first runs plainly as
    warm-up), "off", or "auto". "auto" currently means aten without graphs: the rule that picks the others from
    measurements on the GPU is not set yet (see bench/RESULTS.md)."""
    _require_ext()
    _ext._C.set_cuda_paths(conv, graphs)


def set_cpu_paths(conv: str = "auto") -> None:
    """Choose the CPU convolution (for every thread; environment: CONTRES_CPU_CONV): "aten" (ATen's, oneDNN),
    "own" (contres' own direct convolution on ATen's brgemm microkernel, float32; others stay on ATen's), or
    "auto", which is ATen's on every CPU measured so far (README, "The CPU convolution"). last_paths() names what
    ran: "cpu:aten" or "cpu:own"."""
    _require_ext()
    _ext._C.set_cpu_paths(conv)


def cpu_paths() -> dict:
    """The current choice of set_cpu_paths: {"conv": ...}."""
    _require_ext()
    return dict(_ext._C.cpu_paths())


def cuda_paths() -> dict:
    """The current choice of set_cuda_paths: {"conv": ..., "graphs": ...}."""
    _require_ext()
    return dict(_ext._C.cuda_paths())


def _require_ext():
    if _ext._C is None:
        raise RuntimeError(f"contres: the compiled extension is not loaded: {_ext.LOAD_ERROR}")


def last_reversible_drift():
    """max |u_0 recomputed - x| / max |x| of the latest memory="reversible" backward (a 0-d tensor on the block's
    device, so reading it is the caller's choice of a synchronisation), or None before the first one."""
    return _LAST_DRIFT[0]


def _differentiable_backward(grad_out, x, weight, bias, params, h, layer, activation, norm, method, interp, n_steps,
                             conv_dtype, norm_eps, norm_groups, norm_affine, time_channel):
    """The adjoint as an autograd graph, for higher-order gradients (gradient penalties, Hessian-vector
    products): the compiled adjoint is not differentiable itself, so the block is recomputed with the reference
    and differentiated with create_graph=True, exact at the reference's speed and memory. None for the inputs
    that do not require grad."""
    from . import chain, functional  # functional imports this module

    inputs = [x, weight, bias, *params]
    needs = [t.requires_grad for t in inputs]
    stages = layer if layer in chain.PRESETS else tuple(layer.split(","))
    spec = functional.chain_options(stages, activation, norm, norm_eps, norm_groups or None, norm_affine,
                                    time_channel)
    # mixed precision: the reference under autocast to conv_dtype has the same numerics per op
    mixed = contextlib.nullcontext() if conv_dtype in (None, x.dtype) else torch.autocast(x.device.type, conv_dtype)
    with torch.enable_grad(), mixed:
        leaves = [t if t.requires_grad else t.detach().requires_grad_() for t in inputs]
        rows = leaves[1:]
        if interp != "none":
            rows = reference.interpolate_params(rows, n_steps, interp, method)
        out = reference.integrate(leaves[0], rows[0], rows[1], h, stages, activation, norm, method, params=rows[2:],
                                  chain=spec)
        grads = torch.autograd.grad(out, leaves, grad_out, create_graph=True)
    return tuple(g if need else None for g, need in zip(grads, needs))


# The op's inputs after x, weight and bias: h, layer, activation, checkpoint, norm, method, memory, interp, n_steps,
# conv_dtype, then params, then norm_eps, norm_groups, norm_affine, time_channel, with their defaults (the
# dispatcher hands autograd the arguments given, trailing defaults left out).
_DEFAULTS = (None, None, None, None, "none", "euler", "states", "none", 0, None, None, None, 0, False, False)
_PARAMS_AT = 10


def _given(inputs) -> int:
    """How many of the inputs the dispatcher handed autograd: it leaves out trailing arguments equal to their
    defaults, and the backward returns one gradient per argument it kept."""
    schema = torch.ops.contres.ode_forward.default._schema.arguments
    n = len(inputs)
    while n > 0 and schema[n - 1].has_default_value():
        value, default = inputs[n - 1], schema[n - 1].default_value
        if isinstance(value, (list, tuple)) or value != default:
            break
        n -= 1
    return n


def _register():
    def _setup_context(ctx, inputs, output):
        x, weight, bias, *rest = inputs
        ctx.n_inputs = _given(inputs)
        ctx.params_listed = len(rest) > _PARAMS_AT and rest[_PARAMS_AT] is not None
        rest = list(rest) + list(_DEFAULTS[len(rest):])
        config, params, options = rest[:_PARAMS_AT], rest[_PARAMS_AT] or [], rest[_PARAMS_AT + 1:]
        _, states, aux = output
        ctx.save_for_backward(x, weight, bias, states, *aux, *params)
        ctx.n_aux, ctx.n_params = len(aux), len(params)
        ctx.config, ctx.options = tuple(config), tuple(options)
        ctx.reversible = config[6] == "reversible"
        ctx.mark_non_differentiable(states, *aux)
        ctx.set_materialize_grads(False)  # else autograd fills zero "gradients" of the saved states per backward

    def _backward(ctx, grad_out, _grad_states, _grad_aux):
        x, weight, bias, states, *rest = ctx.saved_tensors
        aux, params = rest[:ctx.n_aux], rest[ctx.n_aux:]
        if grad_out is None:
            grad_out = torch.zeros_like(x)
        def grads(gx, gw, gb, gp):  # one per input given
            full = (gx, gw, gb, *(None,) * _PARAMS_AT, list(gp) if ctx.params_listed else None, *(None,) * 4)
            return full[:ctx.n_inputs]

        if torch.is_grad_enabled():  # backward(create_graph=True): the gradient must itself be differentiable
            h, layer, activation, _, norm, method, _, interp, n_steps, conv_dtype = ctx.config
            gx, gw, gb, *gp = _differentiable_backward(grad_out, x, weight, bias, params, h, layer, activation, norm,
                                                       method, interp, n_steps, conv_dtype, *ctx.options)
            return grads(gx, gw, gb, gp)
        grad_x, grad_w, grad_b, drift, grad_p = torch.ops.contres.ode_backward(
            grad_out, x, weight, bias, states, aux, *ctx.config, params, *ctx.options)
        if ctx.reversible and not torch.compiler.is_compiling():
            _LAST_DRIFT[0] = drift
        return grads(grad_x, grad_w, grad_b, grad_p)

    torch.library.register_autograd("contres::ode_forward", _backward, setup_context=_setup_context)

    def _vmap(info, in_dims, x, weight, bias, *rest):
        """vmap: one call per slice of the mapped dimension (the op's list outputs have no generic fallback)."""
        rest = list(rest) + list(_DEFAULTS[len(rest):])
        params = rest[_PARAMS_AT] or []
        param_dims = in_dims[3 + _PARAMS_AT] if len(in_dims) > 3 + _PARAMS_AT and in_dims[3 + _PARAMS_AT] else \
            [None] * len(params)
        tensors, dims = [x, weight, bias, *params], [*in_dims[:3], *param_dims]

        def take(t, d, i):
            return t if d is None else t.select(d, i)

        outs = []
        for i in range(info.batch_size):
            xi, wi, bi, *pi = (take(t, d, i) for t, d in zip(tensors, dims))
            outs.append(torch.ops.contres.ode_forward(xi, wi, bi, *rest[:_PARAMS_AT], pi, *rest[_PARAMS_AT + 1:]))
        out = torch.stack([o[0] for o in outs])
        states = torch.stack([o[1] for o in outs])
        aux = [torch.stack([o[2][j] for o in outs]) for j in range(len(outs[0][2]))]
        return (out, states, aux), (0, 0, [0] * len(aux))

    torch.library.register_vmap("contres::ode_forward", _vmap)


if _ext.available():
    _register()
