"""Optimize-Discretize gradient of the ODE block: the continuous adjoint, solved with its own Euler steps.

The discrete (Discretize-Optimize) adjoint of docs/math.md is the exact gradient of the Euler network: its
backward step k linearises the forward step k at its start, (u_k, K(t_k)). The continuous adjoint
lam' = -J_u(u(t), theta(t))^T lam, lam(T) = dL/du(T), with dL/dtheta_j = int_0^T w_j(t) J_theta^T lam dt
(w_j: the interpolation basis of control j), solved backward from T with explicit Euler steps of size h,
linearises at the *end* of each forward step instead: at (u_{k+1}, theta(t_{k+1}^-)). It is forward Euler in
reversed time s = T - t, which starts at s = 0 and evaluates each of its steps at its own start. The two agree up
to O(h) and approach each other as n_steps grows.

Choices (documented so that comparisons are reproducible):
- the states u_1..u_N are stored by the forward, not re-integrated backward in time as Neural ODEs do to save
  memory: reverse-time integration of the state is unstable for dissipative layers (Gholami et al., ANODE), and
  storing isolates the one difference under study, the discretisation of the adjoint;
- theta(t_{k+1}^-) is the left limit: for piecewise-constant controls it is the control in effect on the step
  (the backward solve never crosses a control switch inside a step), for linear ones it is the nodal value;
- it is computed with the reference step function and torch.autograd VJPs, one step at a time (a research
  switch; speed is secondary). It is not twice differentiable.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import reference


def end_of_step_matrix(n_steps: int, n_controls: int, interp: str, *, dtype=torch.float64,
                       device=None) -> torch.Tensor:
    """W_end (n_steps, n_controls): theta(t_{k+1}^-) = sum_j W_end[k, j] theta_j for k = 0..N-1.

    Reversing time maps the end t_{k+1} of step k to the start of step N-1-k and the left limit to the value
    (controls own half-open intervals [start, end)), and reverses the order of the controls; so W_end is the
    forward interpolation matrix with both axes flipped. For linear controls this is their nodal value at t_{k+1}.
    """
    W = reference.interpolation_matrix(n_steps, n_controls, interp, dtype=dtype, device=device)
    return W.flip(0, 1)


class _ContinuousAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, T: float, n_steps: int, layer: str, activation: str, interp: str, norm: str):
        K, b = reference.interpolate_controls(weight, bias, n_steps, interp)
        act = reference.activation_fn(activation)
        h = T / n_steps
        u, states = x, []
        for k in range(n_steps):
            u = reference.euler_step(u, K[k], b[k], h, layer, act, norm)
            states.append(u)
        # u_0 = x is never needed: every backward step linearises at the end of its forward step.
        ctx.save_for_backward(weight, bias, torch.stack(states))
        ctx.config = (h, layer, activation, interp, norm)
        return u

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        weight, bias, states = ctx.saved_tensors
        h, layer, activation, interp, norm = ctx.config
        n_steps = states.shape[0]
        W_end = end_of_step_matrix(n_steps, weight.shape[0], interp, dtype=weight.dtype, device=weight.device)
        K_end = torch.einsum("kj,j...->k...", W_end, weight)
        b_end = torch.einsum("kj,jc->kc", W_end, bias)
        lam, grad_K, grad_b = grad_out, [None] * n_steps, [None] * n_steps
        for k in reversed(range(n_steps)):
            lam, grad_K[k], grad_b[k] = _step_vjp(states[k], K_end[k], b_end[k], lam, h, layer, activation, norm)
        grad_weight = torch.einsum("kj,k...->j...", W_end, torch.stack(grad_K))
        grad_bias = torch.einsum("kj,kc->jc", W_end, torch.stack(grad_b))
        return lam, grad_weight, grad_bias, None, None, None, None, None, None


def _step_vjp(u, K, b, lam, h: float, layer: str, activation: str, norm: str):
    """lam^T d(euler_step)/d(u, K, b) at (u, K, b): one explicit Euler step of the adjoint system."""
    with torch.enable_grad():
        u, K, b = (t.detach().requires_grad_(True) for t in (u, K, b))
        out = reference.euler_step(u, K, b, h, layer, reference.activation_fn(activation), norm)
        return torch.autograd.grad(out, (u, K, b), lam)


def ode_block_continuous(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, T: float, n_steps: int,
                         layer: str, activation: str, interp: str, norm: str = "none") -> torch.Tensor:
    """The ODE block's forward (same values as the reference) with the Optimize-Discretize gradient."""
    return _ContinuousAdjoint.apply(x, weight, bias, float(T), int(n_steps), layer, activation, interp, norm)
