"""Pure-PyTorch autograd implementation of the ODE block (the oracle).

This module is the contract of design section 1 written as plain PyTorch: every
fused kernel is tested against it, and it is the fallback where no compiled
kernel exists for a device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LAYERS = ("single", "double_sym")
ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid")
INTERPS = ("constant", "linear")
NORMS = ("none", "tv")
LEAKY_SLOPE = 0.01
TV_EPS = 1e-3  # eps of the "tv" normalisation z / sqrt(sum_c z^2 + eps)


def activation_fn(name: str):
    """The activation as a function of a tensor."""
    if name == "identity":
        return lambda z: z
    if name == "relu":
        return torch.relu
    if name == "leaky_relu":
        return lambda z: F.leaky_relu(z, LEAKY_SLOPE)
    if name == "tanh":
        return torch.tanh
    if name == "sigmoid":
        return torch.sigmoid
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def interpolation_matrix(n_steps: int, n_controls: int, interp: str, *, dtype=torch.float64,
                         device=None) -> torch.Tensor:
    """W of shape (n_steps, n_controls): the weights used at step k are sum_j W[k, j] theta_j.

    constant: control j owns [jT/M, (j+1)T/M); linear: controls are nodes j T/(M-1), states
    sit at t_k = k T/N. T cancels out, so W depends only on N, M and the rule.
    """
    N, M = int(n_steps), int(n_controls)
    W = [[0.0] * M for _ in range(N)]  # plain Python, so torch.compile folds it into a constant
    if interp == "constant" or (interp == "linear" and M == 1):
        for k in range(N):
            W[k][min((k * M) // N, M - 1)] = 1.0
    elif interp == "linear":
        for k in range(N):
            s = k * (M - 1) / N
            j = min(int(math.floor(s)), M - 2)
            a = s - j
            W[k][j] += 1.0 - a
            W[k][j + 1] += a
    else:
        raise ValueError(f"interp must be one of {INTERPS}, got {interp!r}")
    return torch.tensor(W, dtype=dtype, device=device)


def interpolate_controls(weight: torch.Tensor, bias: torch.Tensor, n_steps: int, interp: str):
    """Per-step kernels K (N, C, C, k, k) and biases b (N, C) from the controls (differentiable)."""
    if interp == "constant" and weight.shape[0] == n_steps:  # W is the identity
        return weight, bias
    W = interpolation_matrix(n_steps, weight.shape[0], interp, dtype=weight.dtype, device=weight.device)
    K = torch.einsum("kj,j...->k...", W, weight)
    b = torch.einsum("kj,jc->kc", W, bias)
    return K, b


def tv_norm(z: torch.Tensor) -> torch.Tensor:
    """The "tv" normalisation: each pixel's channel vector divided by its length, z / sqrt(sum_c z^2 + TV_EPS)."""
    return z * torch.rsqrt(z.square().sum(dim=1, keepdim=True) + TV_EPS)


def euler_step(u: torch.Tensor, K: torch.Tensor, b: torch.Tensor, h: float, layer: str, act,
               norm: str = "none") -> torch.Tensor:
    """One forward-Euler step u_{k+1} of design section 1; norm="tv" normalises z before the activation."""
    pad = K.shape[-1] // 2
    z = F.conv2d(u, K, b, padding=pad)
    if norm == "tv":
        z = tv_norm(z)
    elif norm != "none":
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if layer == "single":
        return u + h * act(z)
    if layer == "double_sym":
        return u - h * F.conv_transpose2d(act(z), K, padding=pad)
    raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")


def ode_block_steps(x: torch.Tensor, K: torch.Tensor, b: torch.Tensor, *, T: float, layer: str,
                    activation: str, norm: str = "none") -> torch.Tensor:
    """Run n_steps = K.shape[0] Euler steps on [0, T] with the given per-step kernels and biases."""
    return euler_steps(x, K, b, float(T) / K.shape[0], layer, activation, norm)


def euler_steps(x: torch.Tensor, K: torch.Tensor, b: torch.Tensor, h: float, layer: str,
                activation: str, norm: str = "none") -> torch.Tensor:
    """K.shape[0] Euler steps of size h with the given per-step kernels and biases."""
    act = activation_fn(activation)
    u = x
    for k in range(K.shape[0]):
        u = euler_step(u, K[k], b[k], h, layer, act, norm)
    return u


def ode_block(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, T: float, n_steps: int,
              layer: str = "single", activation: str = "relu", interp: str = "constant",
              norm: str = "none") -> torch.Tensor:
    """Reference ODE block: controls (M, C, C, k, k) and (M, C), n_steps Euler steps on [0, T]."""
    K, b = interpolate_controls(weight, bias, n_steps, interp)
    return ode_block_steps(x, K, b, T=T, layer=layer, activation=activation, norm=norm)
