"""torch.autograd.gradcheck of the fused backend (finite differences in float64, independent of the reference),
and torch.library.opcheck of the two registered ops (schema, fake/meta kernels, autograd registration,
AOT dispatch with dynamic shapes)."""
from __future__ import annotations

import pytest
import torch

import contres
from contres import reference
from conftest import make_inputs, random_like

GRADCHECK_CASES = [
    # layer, activation, interp, checkpoint
    ("single", "identity", "constant", False),
    ("single", "relu", "linear", False),
    ("single", "leaky_relu", "constant", True),
    ("single", "tanh", "linear", 2),
    ("single", "sigmoid", "constant", False),
    ("double_sym", "identity", "linear", True),
    ("double_sym", "relu", "constant", False),
    ("double_sym", "leaky_relu", "linear", 2),
    ("double_sym", "tanh", "constant", False),
    ("double_sym", "sigmoid", "linear", 5),
]


@pytest.mark.parametrize("layer,activation,interp,checkpoint", GRADCHECK_CASES,
                         ids=lambda v: str(v))
def test_gradcheck_fused(device, layer, activation, interp, checkpoint):
    # N = 3 steps, M = 2 controls; tiny so the numerical Jacobian (2 evaluations per input entry) is cheap.
    # relu kinks: with these fixed seeds no pre-activation is within eps of 0 (kinks have measure zero).
    x, w, b = make_inputs(1, 2, 3, 4, 2, 3, dtype=torch.float64, device=device, seed=11, scale=0.6)

    def f(x, w, b):
        return contres.functional.ode_block(x, w, b, T=0.9, n_steps=3, layer=layer, activation=activation,
                                            interp=interp, backend="fused", checkpoint=checkpoint)

    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_kernel_5_many_controls(device):
    x, w, b = make_inputs(2, 2, 3, 3, 4, 5, dtype=torch.float64, device=device, seed=12, scale=0.5)

    def f(x, w, b):
        return contres.functional.ode_block(x, w, b, T=1.0, n_steps=2, layer="double_sym", activation="tanh",
                                            interp="linear", backend="fused")

    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------------------------------------- higher-order gradients
@pytest.mark.parametrize("layer,activation,interp,checkpoint", [
    ("single", "tanh", "linear", False), ("single", "relu", "constant", 2), ("double_sym", "sigmoid", "linear", False),
], ids=str)
def test_gradgradcheck_fused(device, layer, activation, interp, checkpoint):
    """backward(create_graph=True) gives a differentiable gradient: second derivatives by finite differences."""
    x, w, b = make_inputs(1, 2, 3, 3, 2, 3, dtype=torch.float64, device=device, seed=13, scale=0.6)

    def f(x, w, b):
        return contres.functional.ode_block(x, w, b, T=0.9, n_steps=3, layer=layer, activation=activation,
                                            interp=interp, backend="fused", checkpoint=checkpoint)

    assert torch.autograd.gradgradcheck(f, (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("x_requires_grad", [True, False])
def test_double_backward_matches_reference(device, x_requires_grad):
    """A gradient penalty through the fused block: the same second-order gradients as the reference."""
    x, w, b = make_inputs(2, 3, 5, 4, 2, 3, dtype=torch.float64, device=device, seed=14)
    x.requires_grad_(x_requires_grad)
    results = {}
    for backend in ("fused", "reference"):
        y = contres.functional.ode_block(x, w, b, T=1.0, n_steps=4, layer="double_sym", activation="tanh",
                                         interp="linear", backend=backend)
        wrt = (x, w) if x_requires_grad else (w,)
        first = torch.autograd.grad(y.square().sum(), wrt, create_graph=True)
        penalty = sum(g.square().sum() for g in first)
        results[backend] = torch.autograd.grad(penalty, (w, b))
    for name, a, r in zip(("weight", "bias"), results["fused"], results["reference"]):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12, msg=f"second-order grad {name}")


# -------------------------------------------------------------------------------------------------------- opcheck
OPCHECK_CASES = [
    # layer, activation, checkpoint (stride as the op takes it)
    ("single", "identity", 0),
    ("single", "relu", 0),       # bit-packed uint8 mask as aux
    ("single", "leaky_relu", 2),
    ("single", "tanh", 0),
    ("single", "sigmoid", 1),
    ("double_sym", "relu", 0),
    ("double_sym", "tanh", 2),
    ("double_sym", "identity", 5),   # stride > n_steps: no saved state
]


def _per_step_inputs(device, N, requires_grad):
    # H*W = 15 (not a multiple of 8) so the mask's partial byte is in the fake/real comparison
    x, w, b = make_inputs(2, 3, 3, 5, N, 3, dtype=torch.float64, device=device, seed=21, requires_grad=False)
    return tuple(t.requires_grad_(requires_grad) for t in (x, w, b))


@pytest.mark.parametrize("layer,activation,checkpoint", OPCHECK_CASES, ids=lambda v: str(v))
def test_opcheck_ode_forward(device, layer, activation, checkpoint):
    N = 3
    x, w, b = _per_step_inputs(device, N, requires_grad=True)
    torch.library.opcheck(torch.ops.contres.ode_forward.default, (x, w, b, 1.0 / N, layer, activation, checkpoint))


@pytest.mark.parametrize("layer,activation,checkpoint", OPCHECK_CASES, ids=lambda v: str(v))
def test_opcheck_ode_backward(device, layer, activation, checkpoint):
    N = 3
    x, w, b = _per_step_inputs(device, N, requires_grad=False)
    h = 1.0 / N
    _, states, aux = torch.ops.contres.ode_forward(x, w, b, h, layer, activation, checkpoint)
    grad_out = random_like(x, seed=5)
    args = (grad_out, x, w, b, states, aux, h, layer, activation, checkpoint)
    torch.library.opcheck(torch.ops.contres.ode_backward.default, args)
    # and the raw op is the exact adjoint: same numbers as autograd through the per-step reference
    gx, gw, gb, drift, _ = torch.ops.contres.ode_backward(*args)
    assert drift.item() == 0 and drift.shape == ()
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = reference.ode_block_steps(xr, wr, br, T=h * N, layer=layer, activation=activation)
    rx, rw, rb = torch.autograd.grad(y, (xr, wr, br), grad_out)
    for got, want in ((gx, rx), (gw, rw), (gb, rb)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layer,activation,checkpoint", [("single", "relu", 0), ("double_sym", "sigmoid", 2)],
                         ids=lambda v: str(v))
def test_opcheck_low_precision(device, dtype, layer, activation, checkpoint):
    """The fake kernels give the real dtypes (uint8 mask, states in x's dtype) for float32 and bf16 too."""
    if dtype == torch.bfloat16 and device != "cpu":
        pytest.skip("bf16 opcheck runs on the CPU")
    N = 3
    x, w, b = (t.to(dtype).requires_grad_() for t in _per_step_inputs(device, N, requires_grad=False))
    # atol/rtol of opcheck's own comparisons (eager vs AOT dispatch of the same op) stay at their defaults
    torch.library.opcheck(torch.ops.contres.ode_forward.default, (x, w, b, 1.0 / N, layer, activation, checkpoint))
    with torch.no_grad():
        _, states, aux = torch.ops.contres.ode_forward(x, w, b, 1.0 / N, layer, activation, checkpoint)
    gy = random_like(x, seed=6)
    torch.library.opcheck(torch.ops.contres.ode_backward.default,
                          (gy, x.detach(), w.detach(), b.detach(), states, aux, 1.0 / N, layer, activation,
                           checkpoint))


@pytest.mark.parametrize("layer,activation,checkpoint", [("single", "relu", 0), ("double_sym", "tanh", 0),
                                                         ("single", "sigmoid", 2)], ids=lambda v: str(v))
def test_opcheck_tv_norm(layer, activation, checkpoint):
    """norm="tv" (CPU): the fake kernels give its aux (z per step), and the raw backward is the exact adjoint."""
    N = 3
    x, w, b = _per_step_inputs("cpu", N, requires_grad=True)
    h = 1.0 / N
    torch.library.opcheck(torch.ops.contres.ode_forward.default, (x, w, b, h, layer, activation, checkpoint, "tv"))
    xd, wd, bd = (t.detach() for t in (x, w, b))
    _, states, aux = torch.ops.contres.ode_forward(xd, wd, bd, h, layer, activation, checkpoint, "tv")
    grad_out = random_like(x, seed=7)
    args = (grad_out, xd, wd, bd, states, aux, h, layer, activation, checkpoint, "tv")
    torch.library.opcheck(torch.ops.contres.ode_backward.default, args)
    y = reference.ode_block_steps(x, w, b, T=h * N, layer=layer, activation=activation, norm="tv")
    for got, want in zip(torch.ops.contres.ode_backward(*args), torch.autograd.grad(y, (x, w, b), grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer,activation,checkpoint", [("single", "tanh", False), ("double_sym", "relu", 2)],
                         ids=lambda v: str(v))
def test_gradcheck_tv_norm(layer, activation, checkpoint):
    x, w, b = make_inputs(1, 3, 3, 4, 2, 3, dtype=torch.float64, seed=15, scale=0.6)

    def f(x, w, b):
        return contres.functional.ode_block(x, w, b, T=0.9, n_steps=3, layer=layer, activation=activation,
                                            interp="linear", backend="fused", checkpoint=checkpoint, norm="tv")

    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradgradcheck(f, (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_ode_forward_outputs_documented_layout(device):
    """What the forward keeps (ops.py docstring): u_1..u_{N-1} with checkpoint 0, u_s, u_2s, ... with stride s,
    checked against the reference's own states."""
    N = 5
    x, w, b = _per_step_inputs(device, N, requires_grad=False)
    h = 0.2
    ref_states = []
    u = x
    for k in range(N):
        u = reference.euler_step(u, w[k], b[k], h, "single", torch.relu)
        ref_states.append(u)
    for ckpt, kept in ((0, [1, 2, 3, 4]), (2, [2, 4]), (3, [3]), (5, []), (9, [])):
        out, states, _ = torch.ops.contres.ode_forward(x, w, b, h, "single", "relu", ckpt)
        torch.testing.assert_close(out, ref_states[-1], rtol=1e-12, atol=1e-12)
        assert states.shape == (len(kept),) + tuple(x.shape)
        for slot, k in enumerate(kept):
            torch.testing.assert_close(states[slot], ref_states[k - 1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method,memory,interp,M", [("euler", "states", "linear", 2), ("rk4", "states", "constant", 2),
                                                    ("leapfrog", "reversible", "linear", 3),
                                                    ("leapfrog", "states", "constant", 4)], ids=lambda v: str(v))
def test_opcheck_controls_interpolated_in_the_op(device, method, memory, interp, M):
    """interp / n_steps: weight and bias are the controls, which the op interpolates at the stage times itself; the
    fake kernels, the autograd registration and the backward (the controls' gradients, as autograd through the
    reference's interpolation gives them)."""
    N = 3
    x, w, b = make_inputs(2, 3, 3, 5, M, 3, dtype=torch.float64, device=device, seed=22)
    h = 1.0 / N
    config = ("double_sym", "tanh", 0, "none", method, memory, interp, N)
    torch.library.opcheck(torch.ops.contres.ode_forward.default, (x, w, b, h, *config))
    xd, wd, bd = (t.detach() for t in (x, w, b))
    _, states, aux = torch.ops.contres.ode_forward(xd, wd, bd, h, *config)
    grad_out = random_like(x, seed=9)
    args = (grad_out, xd, wd, bd, states, aux, h, *config)
    torch.library.opcheck(torch.ops.contres.ode_backward.default, args)
    y = reference.ode_block(x, w, b, T=1.0, n_steps=N, layer="double_sym", activation="tanh", interp=interp,
                            method=method)
    want = torch.autograd.grad(y, (x, w, b), grad_out)
    for got, r in zip(torch.ops.contres.ode_backward(*args)[:3], want):
        torch.testing.assert_close(got, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["euler", "rk4", "leapfrog"])
def test_opcheck_memory_none(device, method):
    """memory='none' (a forward no backward follows): the fake kernel returns the same empty states and aux."""
    N = 3
    rows = 2 * N + 1 if method == "rk4" else N
    x, w, b = _per_step_inputs(device, rows, requires_grad=False)
    torch.library.opcheck(torch.ops.contres.ode_forward.default,
                          (x, w, b, 1.0 / N, "single", "relu", 0, "none", method, "none"))
