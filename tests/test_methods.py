"""The integrators rk4 and leapfrog (and euler beside them) through the fused op against the reference: forward and
every gradient for each method x layer x activation x interp x norm x dtype, checkpoint strides, leapfrog's
memory="reversible" and its drift, gradcheck / gradgradcheck, opcheck, and the errors of the new options."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import contres
import contres.models
from contres import reference
from conftest import (ACTIVATIONS, INTERPS, LAYERS, assert_close_rel, compare_with_reference, make_inputs,
                      random_like, run_block, tol_for)

METHODS = ("euler", "rk4", "leapfrog")
F = contres.functional


def compare(device, dtype, *, method, layer, activation, interp="linear", B=2, C=3, H=5, W=7, N=4, M=3, k=3,
            T=0.9, **kw):
    compare_with_reference(device, dtype, B=B, C=C, H=H, W=W, N=N, M=M, k=k, layer=layer, activation=activation,
                           interp=interp, T=T, method=method, **kw)


@pytest.mark.parametrize("interp", INTERPS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("method", ["rk4", "leapfrog"])
def test_method_matrix(device, dtype, method, layer, activation, interp):
    # H*W = 35: the relu mask has a partial byte; M < N: linear controls are interpolated at every stage time
    compare(device, dtype, method=method, layer=layer, activation=activation, interp=interp)


@pytest.mark.parametrize("norm", ["none", "tv"])
@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("single", "tanh"), ("double_sym", "sigmoid"),
                                              ("double_sym", "leaky_relu")])
@pytest.mark.parametrize("method", METHODS)
def test_methods_with_tv(device, method, layer, activation, norm):
    compare(device, torch.float64, method=method, layer=layer, activation=activation, norm=norm, C=8)


@pytest.mark.parametrize("checkpoint", [True, 1, 2, 3, 4, 6, 7, 100], ids=lambda c: f"ckpt={c}")
@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("single", "identity"), ("double_sym", "tanh")])
@pytest.mark.parametrize("method", ["rk4", "leapfrog"])
def test_method_checkpoint_strides(device, method, layer, activation, checkpoint):
    # N = 7: strides 2, 3, 4, 6 leave a short last segment; 7 = N and 100 > N recompute everything from x.
    compare(device, torch.float64, method=method, layer=layer, activation=activation, checkpoint=checkpoint, N=7,
            M=4, B=1, H=4, W=5)


@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_few_steps(device, method, N):
    """N = 1 and 2 are edges of every loop (leapfrog's first step, rk4's shared half-step rows)."""
    for checkpoint in (False, 1, 2):
        compare(device, torch.float64, method=method, layer="double_sym", activation="tanh", N=N, M=2,
                checkpoint=checkpoint)
    compare(device, torch.float64, method=method, layer="single", activation="relu", N=N, M=1, interp="constant")


@pytest.mark.parametrize("norm", ["none", "tv"])
@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("single", "sigmoid"), ("double_sym", "tanh"),
                                              ("double_sym", "identity")])
def test_leapfrog_reversible(device, layer, activation, norm):
    """memory="reversible" walks back recomputing the states: in float64 the gradients are the stored-state ones
    to rounding, and the op reports the drift of the recomputed u_0 against x."""
    for N in (1, 2, 6):
        compare(device, torch.float64, method="leapfrog", layer=layer, activation=activation, norm=norm, N=N,
                memory="reversible", C=8 if norm == "tv" else 3)
    drift = contres.ops.last_reversible_drift()
    assert drift is not None and drift.shape == () and drift.dtype == torch.float64
    assert 0 <= drift.item() < 1e-12


def test_leapfrog_reversible_drift_float32():
    """The drift in float32 over 16 steps of a stable block (measured about 1e-6 relative): bounded, reported,
    and the gradients within the float32 tolerance of the stored-state ones."""
    x, w, b = make_inputs(2, 4, 8, 8, 4, 3, dtype=torch.float32, seed=3, scale=0.5)
    kw = dict(T=1.0, n_steps=16, layer="double_sym", activation="tanh", interp="linear", method="leapfrog",
              backend="fused")
    gy = random_like(x)
    y_s, g_s = run_block(x, w, b, gy, **kw)
    y_r, g_r = run_block(x, w, b, gy, memory="reversible", **kw)
    assert torch.equal(y_s, y_r), "the forward is the same computation"
    drift = contres.ops.last_reversible_drift().item()
    assert drift < 1e-4, drift
    for name, a, r in zip(("x", "weight", "bias"), g_r, g_s):
        assert_close_rel(a, r, 1e-4, f"reversible grad {name}")


def test_reversible_keeps_two_states():
    x, w, b = make_inputs(2, 3, 5, 5, 8, 3, requires_grad=False)
    for N, memory, expect in ((8, "reversible", 2), (8, "states", 7), (1, "reversible", 2)):
        _, states, aux = torch.ops.contres.ode_forward(x, w[:N], b[:N], 0.1, "single", "relu", 0, "none", "leapfrog",
                                                       memory)
        assert states.shape[0] == expect
        assert sum(a.numel() for a in aux) == (0 if memory == "reversible" else N * math.ceil(x.numel() / 8))


@pytest.mark.parametrize("method", ["rk4", "leapfrog"])
def test_kept_tensors_are_the_reference_states(method):
    """What the forward keeps (docs/math.md): the states (rk4: and its stage inputs) equal the reference's."""
    N, h = 3, 0.3
    x, w, b = make_inputs(2, 3, 4, 5, 1, 3, requires_grad=False)
    K = w.expand(reference.n_stage_times(N, method), *w.shape[1:]).contiguous()
    bb = b.expand(K.shape[0], b.shape[1]).contiguous()
    _, states, _ = torch.ops.contres.ode_forward(x, K, bb, h, "single", "tanh", 0, "none", method)
    f = lambda u, i: reference.rhs(u, K[i], bb[i], "single", torch.tanh)  # noqa: E731
    expect, u, u_prev = [], x, x
    for k in range(N):
        if method == "rk4":
            k1 = f(u, 2 * k)
            U2 = u + h / 2 * k1
            k2 = f(U2, 2 * k + 1)
            U3 = u + h / 2 * k2
            k3 = f(U3, 2 * k + 1)
            U4 = u + h * k3
            expect += [U2, U3, U4]
            u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + f(U4, 2 * k + 2))
        else:
            u_prev, u = u, 2 * u - u_prev + h * h * f(u, k)
        if k + 1 < N:
            expect.append(u)
    assert states.shape[0] == len(expect)
    for i, e in enumerate(expect):
        torch.testing.assert_close(states[i], e, rtol=1e-12, atol=1e-12, msg=f"slot {i}")


GRADCHECK_CASES = [
    ("rk4", "single", "tanh", "linear", False, "none"),
    ("rk4", "double_sym", "sigmoid", "constant", 2, "none"),
    ("rk4", "single", "relu", "linear", False, "tv"),
    ("leapfrog", "single", "leaky_relu", "linear", False, "none"),
    ("leapfrog", "double_sym", "tanh", "linear", 2, "tv"),
]


@pytest.mark.parametrize("method,layer,activation,interp,checkpoint,norm", GRADCHECK_CASES, ids=str)
def test_gradcheck_methods(device, method, layer, activation, interp, checkpoint, norm):
    x, w, b = make_inputs(1, 2, 3, 4, 2, 3, dtype=torch.float64, device=device, seed=11, scale=0.6)

    def f(x, w, b):
        return F.ode_block(x, w, b, T=0.9, n_steps=3, layer=layer, activation=activation, interp=interp,
                           backend="fused", checkpoint=checkpoint, norm=norm, method=method)

    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradgradcheck(f, (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("double_sym", "tanh")])
def test_gradcheck_reversible(device, layer, activation):
    x, w, b = make_inputs(1, 2, 3, 4, 2, 3, dtype=torch.float64, device=device, seed=12, scale=0.6)

    def f(x, w, b):
        return F.ode_block(x, w, b, T=0.9, n_steps=4, layer=layer, activation=activation, interp="linear",
                           backend="fused", method="leapfrog", memory="reversible")

    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("method,memory,checkpoint", [("rk4", "states", 0), ("rk4", "states", 2),
                                                      ("leapfrog", "states", 0), ("leapfrog", "states", 2),
                                                      ("leapfrog", "reversible", 0)])
@pytest.mark.parametrize("layer,activation,norm", [("single", "relu", "none"), ("double_sym", "sigmoid", "none"),
                                                   ("single", "tanh", "tv")])
def test_opcheck_methods(device, method, memory, checkpoint, layer, activation, norm):
    N, h = 3, 0.3
    x, w, b = make_inputs(2, 3, 3, 5, reference.n_stage_times(N, method), 3, device=device, seed=21)
    args = (x, w, b, h, layer, activation, checkpoint, norm, method, memory)
    torch.library.opcheck(torch.ops.contres.ode_forward.default, args)
    xd, wd, bd = (t.detach() for t in (x, w, b))
    _, states, aux = torch.ops.contres.ode_forward(xd, wd, bd, *args[3:])
    grad_out = random_like(x, seed=5)
    bargs = (grad_out, xd, wd, bd, states, aux, *args[3:])
    torch.library.opcheck(torch.ops.contres.ode_backward.default, bargs)
    y = reference.integrate(x, w, b, h, layer, activation, norm, method)
    want = torch.autograd.grad(y, (x, w, b), grad_out)
    for got, ref in zip(torch.ops.contres.ode_backward(*bargs), want):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_module_and_model_take_the_method():
    torch.manual_seed(0)
    block = contres.ODEBlock(3, n_steps=3, n_controls=2, method="rk4", layer="double_sym", activation="tanh",
                             norm="tv", interp="linear").double()
    assert "method='rk4'" in repr(block)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(block(x), reference.ode_block(x, block.weight, block.bias, T=1.0, n_steps=3,
                                                             layer="double_sym", activation="tanh",
                                                             interp="linear", norm="tv", method="rk4"))
    assert block.refine(n_steps=6).method == "rk4"
    model = contres.models.ContinuousResNet(1, 10, widths=(4, 8), n_steps=2, method="leapfrog", memory="reversible")
    assert all(b.method == "leapfrog" and b.memory == "reversible" for b in model.blocks)
    model(torch.randn(2, 1, 8, 8)).sum().backward()


def test_rk4_stage_times_interpolation():
    """rk4 reads the controls at the half steps j T / (2N): constant controls switch at the step boundary that
    the fourth stage of the step before already sees."""
    W = reference.interpolation_matrix(2, 2, "constant", method="rk4")
    assert W.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1], [0, 1]]
    W = reference.interpolation_matrix(2, 3, "linear", method="rk4")
    expect = [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1]]  # nodes at 0, T/2, T; times 0..T
    torch.testing.assert_close(W, torch.tensor(expect, dtype=torch.float64))


BAD = [
    (dict(method="rk5"), ValueError, r"method must be one of"),
    (dict(method="Euler"), ValueError, r"method must be one of"),
    (dict(memory="none"), ValueError, r"memory must be one of"),
    (dict(memory="reversible"), ValueError, r"memory='reversible' needs method='leapfrog'"),
    (dict(memory="reversible", method="rk4"), ValueError, r"needs method='leapfrog'"),
    (dict(memory="reversible", method="leapfrog", checkpoint=2), ValueError, r"takes no checkpoint"),
    (dict(gradient="continuous", method="rk4"), ValueError, r"gradient='continuous' .* method='euler' only"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_bad_method_options(kwargs, exc, match):
    x, w, b = make_inputs(2, 3, 4, 5, 2, 3, requires_grad=False)
    for backend in ("fused", "reference", "auto"):
        with pytest.raises(exc, match=match):
            F.ode_block(x, w, b, n_steps=3, backend=backend, **kwargs)
    with pytest.raises(exc, match=match):
        contres.ODEBlock(3, n_steps=3, **kwargs)


OP_BAD = [
    (("single", "relu", 0, "none", "midpoint", "states"), ValueError, r"method must be one of euler, rk4, leapfrog"),
    (("single", "relu", 0, "none", "euler", "reversible"), ValueError, r"memory='reversible' needs"),
    (("single", "relu", 2, "none", "leapfrog", "reversible"), ValueError, r"takes no checkpoint stride"),
    (("single", "relu", 0, "none", "leapfrog", "all"), ValueError, r"memory must be one of states, reversible"),
]


@pytest.mark.parametrize("config,exc,match", OP_BAD, ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else "")
def test_op_bad_method_options(config, exc, match):
    x, w, b = make_inputs(2, 3, 4, 5, 3, 3, requires_grad=False)
    with pytest.raises(exc, match=match):
        torch.ops.contres.ode_forward(x, w, b, 0.5, *config)


@pytest.mark.parametrize("rows", [1, 2, 4])
def test_op_rk4_needs_half_step_rows(rows):
    x, w, b = make_inputs(2, 3, 4, 5, rows, 3, requires_grad=False)
    with pytest.raises(ValueError, match=r"method='rk4' takes the kernels at the 2N \+ 1 half steps"):
        torch.ops.contres.ode_forward(x, w, b, 0.5, "single", "relu", 0, "none", "rk4")


def test_rk4_bfloat16_cpu():
    x16, w16, b16 = make_inputs(2, 4, 6, 7, 2, 3, dtype=torch.bfloat16, seed=3)
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x16, w16, b16))
    for method, layer, activation in itertools.product(("rk4", "leapfrog"), LAYERS, ("relu", "tanh")):
        kw = dict(T=1.0, n_steps=3, layer=layer, activation=activation, interp="linear", method=method)
        gy = random_like(x16, seed=4)
        y16, g16 = run_block(x16, w16, b16, gy, backend="fused", **kw)
        y32, g32 = run_block(x32, w32, b32, gy.float(), backend="reference", **kw)
        assert_close_rel(y16, y32, tol_for(torch.bfloat16), f"{method} {layer} bf16 output")
        for name, a, r in zip(("x", "weight", "bias"), g16, g32):
            assert_close_rel(a, r, tol_for(torch.bfloat16, grad=True), f"{method} {layer} bf16 grad {name}")
