"""Typed wrappers of the compiled ops and their autograd.

torch.ops.contres.ode_forward(x, weight, bias, h, layer, activation, checkpoint, norm="none", method="euler",
    memory="states", interp="none", n_steps=0, conv_dtype=None) -> (u_N, states, aux)
torch.ops.contres.ode_backward(grad_out, x, weight, bias, states, aux, h, layer, activation, checkpoint,
    norm="none", method="euler", memory="states", interp="none", n_steps=0, conv_dtype=None)
    -> (grad_x, grad_weight, grad_bias, drift)

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
                conv_dtype=None):
    return torch.ops.contres.ode_forward(x, weight, bias, h, layer, activation, checkpoint, norm, method, memory,
                                         interp, n_steps, conv_dtype)


def ode_backward(grad_out, x, weight, bias, states, aux, h: float, layer: str, activation: str, checkpoint: int,
                 norm: str = "none", method: str = "euler", memory: str = "states", interp: str = "none",
                 n_steps: int = 0, conv_dtype=None):
    return torch.ops.contres.ode_backward(grad_out, x, weight, bias, states, aux, h, layer, activation, checkpoint,
                                          norm, method, memory, interp, n_steps, conv_dtype)


def last_paths() -> dict:
    """What the latest forward and backward op calls on this thread ran: "cpu", "cuda:aten" (cuDNN convolutions
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


def _differentiable_backward(grad_out, x, weight, bias, h, layer, activation, _checkpoint, norm, method, _memory,
                             interp, n_steps, conv_dtype):
    """The adjoint as an autograd graph, for higher-order gradients (gradient penalties, Hessian-vector
    products): the compiled adjoint is not differentiable itself, so the block is recomputed with the reference
    and differentiated with create_graph=True, exact at the reference's speed and memory. None for the inputs
    that do not require grad."""
    needs = [t.requires_grad for t in (x, weight, bias)]
    # mixed precision: the reference under autocast to conv_dtype has the same numerics per op
    mixed = contextlib.nullcontext() if conv_dtype in (None, x.dtype) else torch.autocast(x.device.type, conv_dtype)
    with torch.enable_grad(), mixed:
        leaves = [t if t.requires_grad else t.detach().requires_grad_() for t in (x, weight, bias)]
        K, b = leaves[1:]
        if interp != "none":
            K, b = reference.interpolate_controls(K, b, n_steps, interp, method)
        out = reference.integrate(leaves[0], K, b, h, layer, activation, norm, method)
        grads = torch.autograd.grad(out, leaves, grad_out, create_graph=True)
    return tuple(g if need else None for g, need in zip(grads, needs))


def _register():
    def _setup_context(ctx, inputs, output):
        x, weight, bias, *config = inputs
        _, states, aux = output
        ctx.save_for_backward(x, weight, bias, states, aux)
        # h, layer, activation, checkpoint, norm, method, memory, interp, n_steps, conv_dtype
        ctx.config = tuple(config)
        ctx.reversible = config[6] == "reversible"
        ctx.mark_non_differentiable(states, aux)
        ctx.set_materialize_grads(False)  # else autograd fills zero "gradients" of the saved states per backward

    def _backward(ctx, grad_out, _grad_states, _grad_aux):
        x, weight, bias, states, aux = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(x)
        none = (None,) * len(ctx.config)
        if torch.is_grad_enabled():  # backward(create_graph=True): the gradient must itself be differentiable
            return (*_differentiable_backward(grad_out, x, weight, bias, *ctx.config), *none)
        grad_x, grad_w, grad_b, drift = torch.ops.contres.ode_backward(grad_out, x, weight, bias, states, aux,
                                                                       *ctx.config)
        if ctx.reversible and not torch.compiler.is_compiling():
            _LAST_DRIFT[0] = drift
        return (grad_x, grad_w, grad_b, *none)

    torch.library.register_autograd("contres::ode_forward", _backward, setup_context=_setup_context)


if _ext.available():
    _register()
