"""Order of accuracy of the methods (docs/math.md section 4), measured on smooth problems in float64.

The problem: a single or double_sym layer with tanh, C = 2 channels on a 4x4 image, three controls linearly
interpolated (nodes at 0, T/2, T; every N used is even, so each step sees controls that are linear in time), T = 1.
The error is max|u_N - u(T)| against a fine solution (rk4 with 1024 steps; for leapfrog, rk4 with 1024 steps of
the first-order system u' = v, v' = f, v(0) = 0). Measured ratios error(h) / error(h/2) on N = 12 -> 24 -> 48 ->
96 (single, tanh): euler 1.95, 1.98, 1.99; rk4 16.3, 16.0, 16.0; leapfrog 2.02, 2.01, 2.00 -- first order,
because the start u_{-1} = u_0 puts an O(h) error into the initial velocity (with u_1 = u_0 + h^2/2 f(u_0) instead:
4.02, 4.00, 4.00; against the solution with u'(0) = h/2 f(x, 0): 4.00). Piecewise-constant controls make rk4 first order (its last stage reads the next control at a
switch): 1.98, 1.99, 2.00. The whole file takes a few seconds.
"""
from __future__ import annotations

import math

import pytest
import torch

from contres import reference

T = 1.0
FINE = 1024
NS = (12, 24, 48, 96)


def problem(M=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, k = 2, 3
    x = torch.randn(1, C, 4, 4, generator=g, dtype=torch.float64)
    w = torch.randn(M, C, C, k, k, generator=g, dtype=torch.float64) * (1.5 / math.sqrt(C * k * k))
    b = torch.randn(M, C, generator=g, dtype=torch.float64) * 0.5
    return x, w, b


def rk4_second_order(x, w, b, N, layer, activation, interp, v0=None):
    """u'' = f(u, t), u(0) = x, u'(0) = v0 (default 0), as the first-order system (u, v)' = (v, f(u, t)) by
    classic rk4."""
    K, bb = reference.interpolate_controls(w, b, N, interp, "rk4")
    act = reference.activation_fn(activation)
    f = lambda u, i: reference.rhs(u, K[i], bb[i], layer, act)  # noqa: E731
    h = T / N
    u, v = x, torch.zeros_like(x) if v0 is None else v0
    for k in range(N):
        k1u, k1v = v, f(u, 2 * k)
        k2u, k2v = v + h / 2 * k1v, f(u + h / 2 * k1u, 2 * k + 1)
        k3u, k3v = v + h / 2 * k2v, f(u + h / 2 * k2u, 2 * k + 1)
        k4u, k4v = v + h * k3v, f(u + h * k3u, 2 * k + 2)
        u = u + h / 6 * (k1u + 2 * k2u + 2 * k3u + k4u)
        v = v + h / 6 * (k1v + 2 * k2v + 2 * k3v + k4v)
    return u


def leapfrog_half_start(x, w, b, N, layer, activation, interp):
    """Leapfrog with the second-order start u_1 = u_0 + h^2/2 f(u_0) (Taylor with u'(0) = 0); not what contres
    does, only to show what the start u_{-1} = u_0 costs."""
    K, bb = reference.interpolate_controls(w, b, N, interp, "leapfrog")
    act = reference.activation_fn(activation)
    f = lambda u, i: reference.rhs(u, K[i], bb[i], layer, act)  # noqa: E731
    h = T / N
    u_prev, u = x, x + (h * h / 2) * f(x, 0)
    for k in range(1, N):
        u_prev, u = u, 2 * u - u_prev + (h * h) * f(u, k)
    return u


def ratios(errors):
    return [errors[i] / errors[i + 1] for i in range(len(errors) - 1)]


def measure(method, layer, interp="linear", M=3):
    x, w, b = problem(M)
    kw = dict(layer=layer, activation="tanh", interp=interp)
    if method == "leapfrog" or method == "leapfrog_half_start":
        exact = rk4_second_order(x, w, b, FINE, **kw)
    else:
        exact = reference.ode_block(x, w, b, T=T, n_steps=FINE, method="rk4", **kw)
    errors = []
    for N in NS:
        if method == "leapfrog_half_start":
            u = leapfrog_half_start(x, w, b, N, **kw)
        else:
            u = reference.ode_block(x, w, b, T=T, n_steps=N, method=method, **kw)
        errors.append((u - exact).abs().max().item())
    return errors, ratios(errors)


# (method, expected range of the last ratio): euler 2, rk4 16, leapfrog with u_{-1} = u_0: 2 (first order).
EXPECTED = {"euler": (1.7, 2.3), "rk4": (12.0, 20.0), "leapfrog": (1.7, 2.3), "leapfrog_half_start": (3.4, 4.6)}


@pytest.mark.parametrize("layer", reference.LAYERS)
@pytest.mark.parametrize("method", list(EXPECTED))
def test_order_of_accuracy(method, layer, capsys):
    errors, r = measure(method, layer)
    with capsys.disabled():
        print(f"\n{method:20s} {layer:10s} errors " + " ".join(f"{e:.2e}" for e in errors) +
              "  ratios " + " ".join(f"{q:.2f}" for q in r))
    lo, hi = EXPECTED[method]
    assert lo <= r[-1] <= hi, f"{method} {layer}: ratios {r}, errors {errors}"
    if method == "rk4":
        assert errors[-1] < 1e-7  # the fine solution is accurate enough to show the 16
    else:
        assert errors[-1] > 1e-6  # and the first/second-order errors are far above its own (~1e-13)


def test_rk4_piecewise_constant_controls_is_first_order():
    """With interp='constant' and M > 1, f jumps in t at every control switch; the stage at the end t_k + h of the
    step that ends at a switch reads the next control (controls own half-open intervals [jT/M, (j+1)T/M)), which
    costs O(h) per switch: rk4 converges at first order there. Controls that are smooth in time keep order 4."""
    M = 2  # one switch, at T/2 (every N is even: it is a step boundary)
    x, w, b = problem(M)
    kw = dict(layer="single", activation="tanh")
    exact = x
    for j in range(M):  # the exact solution: control j alone on [jT/M, (j+1)T/M)
        exact = reference.ode_block(exact, w[j:j + 1], b[j:j + 1], T=T / M, n_steps=FINE // M, method="rk4", **kw)
    errors = [(reference.ode_block(x, w, b, T=T, n_steps=N, interp="constant", method="rk4", **kw) - exact)
              .abs().max().item() for N in NS]
    r = ratios(errors)
    assert 1.7 <= r[-1] <= 2.3, f"ratios {r}, errors {errors}"


@pytest.mark.parametrize("layer", reference.LAYERS)
def test_leapfrog_is_second_order_for_a_shifted_initial_velocity(layer):
    """docs/math.md section 4: leapfrog with u_{-1} = u_0 is a second-order approximation of u'' = f with
    u(0) = x and u'(0) = h/2 f(x, 0) (not 0): against that problem's solution the error ratio is 4."""
    x, w, b = problem()
    kw = dict(layer=layer, activation="tanh", interp="linear")
    K, bb = reference.interpolate_controls(w, b, 1, "linear", "leapfrog")
    f0 = reference.rhs(x, K[0], bb[0], layer, torch.tanh)
    errors = []
    for N in NS[1:]:
        exact = rk4_second_order(x, w, b, FINE, v0=(T / N / 2) * f0, **kw)
        errors.append((reference.ode_block(x, w, b, T=T, n_steps=N, method="leapfrog", **kw) - exact)
                      .abs().max().item())
    r = ratios(errors)
    assert 3.4 <= r[-1] <= 4.6, f"ratios {r}, errors {errors}"
