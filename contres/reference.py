"""Pure-PyTorch autograd implementation of the ODE block (the oracle).

This module is the contract of docs/math.md written as plain PyTorch: every fused kernel is tested against it, and
it is the fallback where no compiled kernel exists for a device. Its gradients are PyTorch autograd's, i.e. the exact
discrete adjoint of each integrator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

LAYERS = ("single", "double_sym")  # the presets; any other right-hand side is a chain of stages (contres.chain)
ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus")
INTERPS = ("constant", "linear")
NORMS = ("none", "tv", "group", "instance")
METHODS = ("euler", "rk4", "leapfrog")
MEMORIES = ("states", "reversible")  # what the fused backward keeps; "reversible": leapfrog only
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
    if name == "softplus":
        return lambda z: F.softplus(z, beta=1, threshold=20)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def stage_times(n_steps: int, method: str = "euler") -> list:
    """The times at which the method evaluates the controls, as fractions (p, q) of T: t_k = k/N for euler and
    leapfrog (step k uses row k), the half steps j/(2N), j = 0..2N, for rk4 (step k uses rows 2k, 2k+1, 2k+1,
    2k+2)."""
    N = int(n_steps)
    if method in ("euler", "leapfrog"):
        return [(k, N) for k in range(N)]
    if method == "rk4":
        return [(j, 2 * N) for j in range(2 * N + 1)]
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def n_stage_times(n_steps: int, method: str = "euler") -> int:
    """Rows of the per-time weights the method uses: N, or 2N + 1 for rk4."""
    return 2 * int(n_steps) + 1 if method == "rk4" else int(n_steps)


def control_weights_at(times, n_controls: int, interp: str) -> list:
    """Rows W[i] (lists of n_controls floats): theta(t_i) = sum_j W[i][j] theta_j, times t_i = p/q of T.

    constant: control j = min(floor(t M / T), M - 1) owns [jT/M, (j+1)T/M); linear: controls are nodes jT/(M-1),
    s = t (M - 1) / T, j = min(floor(s), M - 2), weight s - j on control j + 1; with M = 1 "linear" is "constant".
    Integer arithmetic up to the weights themselves, so no rounding of the times moves a step to another control.
    """
    M = int(n_controls)
    if interp not in INTERPS:
        raise ValueError(f"interp must be one of {INTERPS}, got {interp!r}")
    rows = []
    for p, q in times:
        row = [0.0] * M
        if interp == "constant" or M == 1:
            row[min(p * M // q, M - 1)] = 1.0
        else:
            j = min(p * (M - 1) // q, M - 2)
            a = (p * (M - 1) - j * q) / q  # s - j, with s = p (M - 1) / q
            row[j] += 1.0 - a
            row[j + 1] += a
        rows.append(row)
    return rows


def interpolation_matrix(n_steps: int, n_controls: int, interp: str, *, dtype=torch.float64, device=None,
                         method: str = "euler") -> torch.Tensor:
    """W of shape (n_stage_times, n_controls): the weights used at the method's i-th stage time are
    sum_j W[i, j] theta_j (see stage_times). T cancels out, so W depends only on N, M, the rule and the method."""
    return torch.tensor(control_weights_at(stage_times(n_steps, method), n_controls, interp), dtype=dtype,
                        device=device)


_WEIGHTS_ON_DEVICE: dict = {}


def _interpolation_weights(n_steps: int, n_controls: int, interp: str, method: str, dtype, device) -> torch.Tensor:
    """interpolation_matrix, kept on its device per configuration: CUDA graph capture forbids host-to-device
    copies, so a block captured after one uncaptured call finds its weights already there (and no call copies them
    again). Traced by torch.compile, it is a constant of the graph instead. Callers must not modify it."""
    if torch.compiler.is_compiling():
        return interpolation_matrix(n_steps, n_controls, interp, dtype=dtype, device=device, method=method)
    key = (int(n_steps), int(n_controls), interp, method, dtype, torch.device(device))
    W = _WEIGHTS_ON_DEVICE.get(key)
    if W is None:
        if torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("contres: a CUDA graph capture cannot copy this block's interpolation weights to the "
                               "GPU; run the block once before capturing it")
        with torch.inference_mode(False):  # an inference tensor in the cache would fail later autograd calls
            W = interpolation_matrix(n_steps, n_controls, interp, dtype=dtype, device=device, method=method)
        if len(_WEIGHTS_ON_DEVICE) < 4096:  # configurations, not data: bounded all the same
            _WEIGHTS_ON_DEVICE[key] = W
    return W


def interpolate_params(params, n_steps: int, interp: str, method: str = "euler") -> list:
    """Each parameter (n_controls, ...) interpolated at the method's stage times (differentiable), in its own
    dtype also under torch.autocast: a model holds its parameters in that dtype (a norm's scale stays float32), and
    the fused op mixes its controls the same way."""
    out = []
    for p in params:
        if method != "rk4" and interp == "constant" and p.shape[0] == n_steps:  # W is the identity
            out.append(p)
            continue
        W = _interpolation_weights(n_steps, p.shape[0], interp, method, p.dtype, p.device)
        with torch.autocast(p.device.type, enabled=False):
            out.append(torch.einsum("kj,j...->k...", W, p))
    return out


def interpolate_controls(weight: torch.Tensor, bias: torch.Tensor, n_steps: int, interp: str,
                         method: str = "euler"):
    """Per-time kernels K (n_stage_times, C, C, k, k) and biases b (n_stage_times, C) from the controls
    (differentiable): the controls interpolated at the method's stage times."""
    if method != "rk4" and interp == "constant" and weight.shape[0] == n_steps:  # W is the identity
        return weight, bias
    W = _interpolation_weights(n_steps, weight.shape[0], interp, method, weight.dtype, weight.device)
    K = torch.einsum("kj,j...->k...", W, weight)
    b = torch.einsum("kj,jc->kc", W, bias)
    return K, b


def tv_norm(z: torch.Tensor) -> torch.Tensor:
    """The "tv" normalisation: each pixel's channel vector divided by its length, z / sqrt(sum_c z^2 + TV_EPS)."""
    return z * torch.rsqrt(z.square().sum(dim=1, keepdim=True) + TV_EPS)


def rhs(u: torch.Tensor, K: torch.Tensor, b: torch.Tensor, layer: str, act, norm: str = "none") -> torch.Tensor:
    """The layer's right-hand side f(u) with kernel K and bias b: act(conv(u, K) + b) for "single",
    -convT(act(conv(u, K) + b), K) for "double_sym"; norm="tv" normalises z = conv(u, K) + b before act."""
    pad = K.shape[-1] // 2
    z = F.conv2d(u, K, b, padding=pad)
    if norm == "tv":
        z = tv_norm(z)
    elif norm != "none":
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if layer == "single":
        return act(z)
    if layer == "double_sym":
        return -F.conv_transpose2d(act(z), K, padding=pad)
    raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")


@dataclass(frozen=True)
class Chain:
    """A right-hand side as a chain of stages (contres.chain) with its options: what chain_rhs evaluates."""
    stages: tuple
    activation: str
    norm: str = "none"
    norm_eps: float = TV_EPS
    norm_groups: Optional[int] = None
    norm_affine: bool = False
    time_channel: bool = False


def chain_rhs(u: torch.Tensor, t: float, params, chain: Chain) -> torch.Tensor:
    """f(u, t) of a chain with one stage time's parameters (in the op's order: the first conv's kernel and bias,
    then by stage each other conv's kernel and bias, each bias stage's shift, each affine norm's scale and shift),
    written with the plain PyTorch ops a model would use: F.conv2d over torch.cat([t * 1, z]) for the time
    channel, F.group_norm, F.conv_transpose2d."""
    act = activation_fn(chain.activation)
    first, it = list(params[:2]), iter(params[2:])
    kernels = []  # each conv's kernel, for the conv_t after it
    z = u
    for stage in chain.stages:
        if stage == "conv":
            K, b = (first.pop(0), first.pop(0)) if first else (next(it), next(it))
            kernels.append(K)
            inp = torch.cat([torch.full_like(z[:, :1], t), z], 1) if chain.time_channel else z
            z = F.conv2d(inp, K, b, padding=K.shape[-1] // 2)
        elif stage == "conv_t":
            K = kernels[-1][:, 1:] if chain.time_channel else kernels[-1]
            z = F.conv_transpose2d(z, K, padding=K.shape[-1] // 2)
        elif stage == "bias":
            z = z + next(it).view(1, -1, 1, 1)
        elif stage == "norm":
            w, b = (next(it), next(it)) if chain.norm_affine else (None, None)
            if chain.norm == "tv":
                z = z * torch.rsqrt(z.square().sum(dim=1, keepdim=True) + chain.norm_eps)
                if w is not None:
                    z = z * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
            else:
                groups = z.shape[1] if chain.norm == "instance" else (
                    chain.norm_groups if chain.norm_groups is not None else min(32, z.shape[1]))
                z = F.group_norm(z, groups, w, b, chain.norm_eps)
        elif stage == "act":
            z = act(z)
        elif stage == "neg":
            z = -z
        else:
            raise ValueError(f"unknown stage {stage!r}")
    return z


def stage_time(row: int, h: float, method: str) -> float:
    """The time of stage-time row `row`: k h, or rk4's half steps row h / 2 (the op's arithmetic)."""
    return row * (h / 2) if method == "rk4" else row * h


def euler_step(u: torch.Tensor, K: torch.Tensor, b: torch.Tensor, h: float, layer: str, act,
               norm: str = "none") -> torch.Tensor:
    """One forward-Euler step u + h f(u)."""
    return u + h * rhs(u, K, b, layer, act, norm)


def integrate(x: torch.Tensor, K: torch.Tensor, b: torch.Tensor, h: float, layer, activation: str,
              norm: str = "none", method: str = "euler", *, params=(), chain: Optional[Chain] = None
              ) -> torch.Tensor:
    """The method's N steps of size h with the per-time kernels and biases of interpolate_controls (and, for a
    chain, its other parameters per time, `params`, in the op's order).

    euler:    u_{k+1} = u_k + h f(u_k, t_k)
    rk4:      k1 = f(u_k, t_k), k2 = f(u_k + h/2 k1, t_k + h/2), k3 = f(u_k + h/2 k2, t_k + h/2),
              k4 = f(u_k + h k3, t_k + h);  u_{k+1} = u_k + h/6 (k1 + 2 k2 + 2 k3 + k4)
    leapfrog: u_{k+1} = 2 u_k - u_{k-1} + h^2 f(u_k, t_k), with u_{-1} = u_0
    """
    if chain is None:
        act = activation_fn(activation)
        f = lambda u, i: rhs(u, K[i], b[i], layer, act, norm)  # noqa: E731
    else:
        rows = [K, b, *params]
        f = lambda u, i: chain_rhs(u, stage_time(i, h, method), [p[i] for p in rows], chain)  # noqa: E731
    if method == "euler":
        u = x
        for k in range(K.shape[0]):
            u = u + h * f(u, k)
        return u
    if method == "rk4":
        if K.shape[0] % 2 != 1:
            raise ValueError(f"rk4 needs kernels at the 2N + 1 half steps, got {K.shape[0]}")
        u = x
        for k in range((K.shape[0] - 1) // 2):
            k1 = f(u, 2 * k)
            k2 = f(u + (h / 2) * k1, 2 * k + 1)
            k3 = f(u + (h / 2) * k2, 2 * k + 1)
            k4 = f(u + h * k3, 2 * k + 2)
            u = u + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        return u
    if method == "leapfrog":
        u_prev, u = x, x
        for k in range(K.shape[0]):
            u_prev, u = u, 2 * u - u_prev + (h * h) * f(u, k)
        return u
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def euler_steps(x: torch.Tensor, K: torch.Tensor, b: torch.Tensor, h: float, layer: str,
                activation: str, norm: str = "none") -> torch.Tensor:
    """K.shape[0] Euler steps of size h with the given per-step kernels and biases."""
    return integrate(x, K, b, h, layer, activation, norm, "euler")


def ode_block_steps(x: torch.Tensor, K: torch.Tensor, b: torch.Tensor, *, T: float, layer: str,
                    activation: str, norm: str = "none", method: str = "euler") -> torch.Tensor:
    """The method on [0, T] with the given per-time kernels and biases (N = K.shape[0], or (K.shape[0] - 1) / 2
    for rk4)."""
    n_steps = (K.shape[0] - 1) // 2 if method == "rk4" else K.shape[0]
    return integrate(x, K, b, float(T) / n_steps, layer, activation, norm, method)


def ode_block(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, T: float, n_steps: int,
              layer="single", activation: str = "relu", interp: str = "constant",
              norm: str = "none", method: str = "euler", params=(), chain: Optional[Chain] = None) -> torch.Tensor:
    """Reference ODE block: controls (M, C, C, k, k) and (M, C), n_steps steps of the method on [0, T]; a chain's
    other controls in `params` (the op's order) and its stages and options in `chain`."""
    K, b, *rows = interpolate_params([weight, bias, *params], n_steps, interp, method)
    return integrate(x, K, b, float(T) / n_steps, layer, activation, norm, method, params=rows, chain=chain)
