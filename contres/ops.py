"""Typed wrappers of the compiled ops, their fake (meta) implementations for torch.compile, and autograd.

torch.ops.contres.ode_forward(x, weight, bias, h, layer, activation, checkpoint, norm="none")
    -> (u_N, states, aux)
torch.ops.contres.ode_backward(grad_out, x, weight, bias, states, aux, h, layer, activation, checkpoint,
    norm="none") -> (grad_x, grad_weight, grad_bias)

weight (N, C, C, k, k) and bias (N, C) are per step (already interpolated from the controls).
What the forward keeps for the backward (`states`, `aux`):
  checkpoint = 0: u_1 .. u_{N-1} (u_0 is x itself), and per step
      norm="tv":                z itself (the backward recomputes the normalisation and act' from it);
      single + relu/leaky_relu: the sign of z, 1 bit per element;
      single + tanh/sigmoid:    act(z) (the backward needs act', which these give from act(z));
      single + identity:        nothing;
      double_sym:               act(z) (its weight gradient needs it).
  checkpoint = s > 0: only u_s, u_2s, ...; the backward recomputes each segment of s steps.
"""
from __future__ import annotations

import torch

from . import _ext, reference

_AUX_MASK = ("relu", "leaky_relu")
_AUX_NONE = ("identity",)


def _n_saved_states(n_steps: int, checkpoint: int) -> int:
    return n_steps - 1 if checkpoint == 0 else (n_steps - 1) // checkpoint


def _state_stack(x: torch.Tensor, n: int) -> torch.Tensor:
    """n states in the ops' internal layout, channels_last (the convolutions are fastest in it on both devices),
    as one (n, B, C, H, W) tensor -- the same layout as kLayout in ode_block.cpp."""
    B, C, H, W = x.shape
    return x.new_empty((n, B, H, W, C)).permute(0, 1, 4, 2, 3)


def _aux_like(x: torch.Tensor, n_steps: int, layer: str, activation: str, checkpoint: int,
              norm: str) -> torch.Tensor:
    if checkpoint != 0 or (layer == "single" and activation in _AUX_NONE and norm == "none"):
        return x.new_empty((0,))
    B, C, H, W = x.shape
    if layer == "single" and activation in _AUX_MASK and norm == "none":
        return x.new_empty((n_steps, B, C, (H * W + 7) // 8), dtype=torch.uint8)
    return _state_stack(x, n_steps)


def ode_forward(x, weight, bias, h: float, layer: str, activation: str, checkpoint: int, norm: str = "none"):
    return torch.ops.contres.ode_forward(x, weight, bias, h, layer, activation, checkpoint, norm)


def ode_backward(grad_out, x, weight, bias, states, aux, h: float, layer: str, activation: str, checkpoint: int,
                 norm: str = "none"):
    return torch.ops.contres.ode_backward(grad_out, x, weight, bias, states, aux, h, layer, activation, checkpoint,
                                          norm)


def _differentiable_backward(grad_out, x, weight, bias, h, layer, activation, _checkpoint, norm):
    """The adjoint as an autograd graph, for higher-order gradients (gradient penalties, Hessian-vector
    products): the compiled adjoint is not differentiable itself, so the block is recomputed with the reference
    and differentiated with create_graph=True, exact at the reference's speed and memory. None for the inputs
    that do not require grad."""
    needs = [t.requires_grad for t in (x, weight, bias)]
    with torch.enable_grad():
        leaves = [t if t.requires_grad else t.detach().requires_grad_() for t in (x, weight, bias)]
        out = reference.euler_steps(*leaves, h, layer, activation, norm)
        grads = torch.autograd.grad(out, leaves, grad_out, create_graph=True)
    return tuple(g if need else None for g, need in zip(grads, needs))


def _register():
    @torch.library.register_fake("contres::ode_forward")
    def _ode_forward_fake(x, weight, bias, h, layer, activation, checkpoint, norm="none"):
        n_steps = weight.shape[0]
        out = torch.empty_like(x, memory_format=torch.preserve_format)
        states = _state_stack(x, _n_saved_states(n_steps, checkpoint))
        return out, states, _aux_like(x, n_steps, layer, activation, checkpoint, norm)

    @torch.library.register_fake("contres::ode_backward")
    def _ode_backward_fake(grad_out, x, weight, bias, states, aux, h, layer, activation, checkpoint, norm="none"):
        return (torch.empty_like(x, memory_format=torch.preserve_format), weight.new_empty(weight.shape),
                bias.new_empty(bias.shape))

    def _setup_context(ctx, inputs, output):
        x, weight, bias, h, layer, activation, checkpoint, norm = inputs
        _, states, aux = output
        ctx.save_for_backward(x, weight, bias, states, aux)
        ctx.config = (h, layer, activation, checkpoint, norm)
        ctx.mark_non_differentiable(states, aux)
        ctx.set_materialize_grads(False)  # else autograd fills zero "gradients" of the saved states per backward

    def _backward(ctx, grad_out, _grad_states, _grad_aux):
        x, weight, bias, states, aux = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(x)
        if torch.is_grad_enabled():  # backward(create_graph=True): the gradient must itself be differentiable
            return (*_differentiable_backward(grad_out, x, weight, bias, *ctx.config), None, None, None, None, None)
        grad_x, grad_w, grad_b = torch.ops.contres.ode_backward(grad_out, x, weight, bias, states, aux, *ctx.config)
        return grad_x, grad_w, grad_b, None, None, None, None, None

    torch.library.register_autograd("contres::ode_forward", _backward, setup_context=_setup_context)


if _ext.available():
    _register()
