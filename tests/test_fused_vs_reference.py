"""The fused op (backend="fused") against the pure-PyTorch reference (backend="reference"): output and the
gradients wrt x, weight and bias under a random upstream gradient.

The matrix is split to respect the time budget: the full cross product of layer x activation x interp x dtype on
one small shape; layer x activation x checkpoint on one shape; a sampled list of shapes / step counts / kernel
sizes; bf16 on the CPU against a float32 reference.
"""
from __future__ import annotations

import math

import pytest
import torch

import contres
from contres import reference
from conftest import (ACTIVATIONS, INTERPS, LAYERS, assert_close_rel, compare_with_reference, make_inputs,
                      random_like, rel_err, run_block, tol_for)


compare = compare_with_reference


# ---------------------------------------------------------------------------------------------- full cross product
@pytest.mark.parametrize("interp", INTERPS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layer", LAYERS)
def test_full_matrix_small(device, dtype, layer, activation, interp):
    # H*W = 35 (not a multiple of 8: the relu mask has a partial byte), H != W, M < N, linear weights non-trivial
    compare(device, dtype, B=2, C=3, H=5, W=7, N=5, M=3, k=3, layer=layer, activation=activation, interp=interp)


@pytest.mark.parametrize("checkpoint", [True, 1, 2, 3, 4, 6, 7, 100], ids=lambda c: f"ckpt={c}")
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layer", LAYERS)
def test_checkpoint_matrix(device, layer, activation, checkpoint):
    # N = 7: strides 2, 3, 4, 6 leave a short last segment; 7 = N and 100 > N recompute everything from x.
    compare(device, torch.float64, B=2, C=3, H=4, W=5, N=7, M=4, k=3, layer=layer, activation=activation,
            interp="linear", checkpoint=checkpoint)


@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("single", "identity"), ("double_sym", "tanh")])
def test_checkpoint_stride_far_beyond_n_steps(device, layer, activation):
    """A stride s > n_steps means "keep no state"; it must behave like s = n_steps, not allocate s buffers.
    (With s = 10**9 the op used to ask the allocator for (s - 1) * B*C*H*W elements of segment scratch.)"""
    compare(device, torch.float64, B=1, C=2, H=4, W=4, N=3, M=2, k=3, layer=layer, activation=activation,
            interp="constant", checkpoint=10**9)


# ------------------------------------------------------------------------------------------------- sampled shapes
# (B, C, H, W, N, M, k, layer, activation, interp, checkpoint)
SHAPE_CASES = [
    (1, 4, 8, 8, 4, 4, 3, "single", "relu", "constant", False),           # batch 1, M = N
    (1, 2, 3, 11, 3, 1, 3, "double_sym", "tanh", "linear", False),        # M = 1 (linear == constant)
    (1, 2, 3, 11, 3, 1, 3, "single", "leaky_relu", "constant", True),     # M = 1
    (2, 3, 6, 9, 3, 7, 3, "single", "sigmoid", "linear", False),          # M > N
    (2, 3, 6, 9, 3, 7, 3, "double_sym", "relu", "constant", 2),           # M > N
    (3, 2, 5, 5, 1, 1, 3, "single", "tanh", "constant", False),           # a single step
    (3, 2, 5, 5, 1, 3, 3, "double_sym", "leaky_relu", "linear", True),    # a single step, M > N
    (2, 3, 9, 4, 6, 2, 1, "single", "relu", "linear", False),             # 1x1 kernel
    (2, 3, 9, 4, 6, 2, 1, "double_sym", "sigmoid", "constant", 4),        # 1x1 kernel
    (2, 4, 7, 10, 5, 3, 5, "single", "identity", "linear", 2),            # 5x5 kernel
    (2, 4, 7, 10, 5, 3, 5, "double_sym", "tanh", "constant", False),      # 5x5 kernel
    (1, 3, 9, 9, 4, 2, 7, "single", "leaky_relu", "linear", False),       # 7x7 kernel
    (1, 3, 9, 9, 4, 2, 7, "double_sym", "identity", "linear", 3),         # 7x7 kernel
    (1, 3, 5, 6, 4, 2, 7, "single", "relu", "constant", True),            # kernel wider than the image
    (2, 8, 16, 12, 8, 3, 3, "single", "relu", "linear", False),           # a larger one
    (2, 8, 16, 12, 8, 8, 3, "double_sym", "sigmoid", "constant", True),   # a larger one, checkpointed
    (4, 1, 1, 1, 3, 2, 3, "single", "tanh", "linear", False),             # 1x1 image, one channel
    (2, 2, 1, 13, 5, 5, 3, "double_sym", "relu", "linear", False),        # a single row (H*W = 13)
    (2, 5, 3, 3, 12, 5, 3, "single", "leaky_relu", "linear", 5),          # many steps
    (1, 3, 4, 4, 10, 10, 3, "double_sym", "tanh", "constant", 3),         # M = N, stride not dividing N
]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=lambda c: "B{}C{}H{}W{}N{}M{}k{}-{}-{}-{}-ckpt{}".format(*c))
def test_shapes(device, dtype, case):
    B, C, H, W, N, M, k, layer, activation, interp, checkpoint = case
    compare(device, dtype, B=B, C=C, H=H, W=W, N=N, M=M, k=k, layer=layer, activation=activation, interp=interp,
            checkpoint=checkpoint, seed=SHAPE_CASES.index(case))


@pytest.mark.parametrize("T", [0.25, 3])
@pytest.mark.parametrize("layer", LAYERS)
def test_final_time(device, layer, T):
    # T enters only through h = T / N: an integer T and a small T must both be honoured
    compare(device, torch.float64, B=2, C=3, H=4, W=6, N=4, M=2, k=3, layer=layer, activation="tanh",
            interp="linear", T=T, scale=0.5)


def test_upstream_grad_through_non_contiguous_states(device):
    # the fused result must match when only part of the output is used downstream (zeros in the grad)
    x, w, b = make_inputs(2, 3, 5, 5, 3, 3, device=device)
    kw = dict(T=1.0, n_steps=3, layer="double_sym", activation="relu", interp="constant")
    outs = []
    for backend in ("reference", "fused"):
        y = contres.functional.ode_block(x, w, b, backend=backend, **kw)
        loss = (y[:, 1:, 1:4, ::2] * random_like(y[:, 1:, 1:4, ::2])).sum()
        outs.append(torch.autograd.grad(loss, (x, w, b)))
    for gf, gr in zip(outs[1], outs[0]):
        assert_close_rel(gf, gr, tol_for(torch.float64, grad=True))


@pytest.mark.parametrize("layer,activation,checkpoint", [("single", "relu", False), ("double_sym", "tanh", 2)])
def test_fused_is_deterministic_cpu(layer, activation, checkpoint):
    """Two identical calls give bit-identical outputs and gradients on the CPU (the bias-grad reduction is
    ordered; oneDNN convolutions are deterministic for a fixed thread count)."""
    x, w, b = make_inputs(2, 4, 9, 7, 3, 3, dtype=torch.float32, seed=17)
    kw = dict(T=1.0, n_steps=5, layer=layer, activation=activation, interp="linear", backend="fused",
              checkpoint=checkpoint)
    gy = random_like(x)
    y1, g1 = run_block(x, w, b, gy, **kw)
    y2, g2 = run_block(x, w, b, gy, **kw)
    for a, c in zip((y1,) + g1, (y2,) + g2):
        assert torch.equal(a, c)


# ---------------------------------------------------------------------------------------------------------- bf16
BF16_CASES = [
    (2, 4, 6, 7, 4, 2, 3, "single", "relu", "linear", False),
    (2, 4, 6, 7, 4, 2, 3, "single", "tanh", "constant", True),
    (2, 4, 6, 7, 4, 4, 3, "single", "sigmoid", "constant", False),
    (2, 4, 6, 7, 4, 2, 3, "double_sym", "leaky_relu", "constant", False),
    (2, 4, 6, 7, 4, 3, 3, "double_sym", "tanh", "linear", 2),
    (1, 3, 5, 5, 3, 1, 5, "double_sym", "identity", "constant", False),
]


@pytest.mark.parametrize("case", BF16_CASES, ids=lambda c: "{}-{}-{}-ckpt{}".format(*c[7:]))
def test_bfloat16_cpu(case):
    """bf16 through the fused op (float accumulation inside) against the float32 reference on the same
    bf16-rounded inputs, with the loose tolerance of conftest.TOL[bfloat16]."""
    B, C, H, W, N, M, k, layer, activation, interp, checkpoint = case
    x16, w16, b16 = make_inputs(B, C, H, W, M, k, dtype=torch.bfloat16, seed=3)
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x16, w16, b16))
    kw = dict(T=1.0, n_steps=N, layer=layer, activation=activation, interp=interp)
    gy16 = random_like(x16, seed=4)
    y16, g16 = run_block(x16, w16, b16, gy16, backend="fused", checkpoint=checkpoint, **kw)
    y32, g32 = run_block(x32, w32, b32, gy16.float(), backend="reference", **kw)
    yr16, gr16 = run_block(x16, w16, b16, gy16, backend="reference", **kw)  # PyTorch's own bf16 rounding
    assert y16.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in g16)
    assert_close_rel(y16, y32, tol_for(torch.bfloat16), "bf16 output")
    for name, gf, gr in zip(("grad x", "grad weight", "grad bias"), g16, g32):
        assert_close_rel(gf, gr, tol_for(torch.bfloat16, grad=True), f"bf16 {name}")
    # and no worse than eager PyTorch in bf16 (float accumulation should make it at least as good)
    for name, a, r, ref in zip(("output", "grad x", "grad weight", "grad bias"), (y16,) + g16, (yr16,) + gr16,
                               (y32,) + g32):
        err_fused, err_eager = rel_err(a, ref), rel_err(r, ref)
        assert err_fused <= 2 * err_eager + 1e-2, f"bf16 {name}: fused {err_fused:.3e} vs eager {err_eager:.3e}"


@pytest.mark.parametrize("autocast_state,out_dtype", [("float32", torch.float32), ("reduced", torch.bfloat16)])
@pytest.mark.parametrize("layer,activation,norm", [("single", "relu", "none"), ("double_sym", "tanh", "none"),
                                                   ("single", "sigmoid", "tv")])
def test_cpu_autocast_bfloat16(layer, activation, norm, autocast_state, out_dtype):
    """Under torch.autocast("cpu", bfloat16) the fused block keeps a float32 state and runs its convolutions in
    bf16, as plain per-op autocast does (autocast_state="float32", the default), or runs wholly in bf16 ("reduced"),
    float accumulation inside either way; the gradients come back in the float32 parameters' dtype.
    test_mixed_precision.py compares the errors with plain autocast's."""
    x, w, b = make_inputs(2, 8, 6, 6, 3, 3, dtype=torch.float32, seed=8, scale=0.6)
    kw = dict(T=1.0, n_steps=4, layer=layer, activation=activation, interp="linear", norm=norm)
    gy = random_like(x, seed=9)
    y_ref, g_ref = run_block(x, w, b, gy, backend="reference", **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = contres.functional.ode_block(x, w, b, backend="fused", autocast_state=autocast_state, **kw)
    assert y.dtype == out_dtype
    grads = torch.autograd.grad(y, (x, w, b), gy.to(out_dtype))
    assert [g.dtype for g in grads] == [torch.float32] * 3
    assert_close_rel(y, y_ref, tol_for(torch.bfloat16), "autocast output")
    for name, a, r in zip(("grad x", "grad weight", "grad bias"), grads, g_ref):
        assert_close_rel(a, r, tol_for(torch.bfloat16, grad=True), f"autocast {name}")


# ------------------------------------------------------------------------------------------------ norm="tv"
# C = 3 runs the scalar per-pixel loops, C = 8 and 16 the vectorised ones (8 floats or 4 doubles per vector).
@pytest.mark.parametrize("C", [3, 8, 16])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layer", LAYERS)
def test_tv_norm_matrix(dtype, layer, activation, C):
    compare("cpu", dtype, B=2, C=C, H=5, W=3, N=4, M=3, k=3, layer=layer, activation=activation, interp="linear",
            norm="tv", scale=0.6)


@pytest.mark.parametrize("checkpoint", [True, 2, 100], ids=lambda c: f"ckpt={c}")
@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("single", "identity"),
                                              ("double_sym", "tanh"), ("double_sym", "sigmoid")])
def test_tv_norm_checkpoint(layer, activation, checkpoint):
    compare("cpu", torch.float64, B=2, C=4, H=4, W=5, N=5, M=2, k=3, layer=layer, activation=activation,
            interp="constant", checkpoint=checkpoint, norm="tv")


def test_tv_norm_normalises_each_pixel():
    """The reference's tv_norm is what its docstring says: unit channel vectors up to eps, per pixel."""
    z = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    n = reference.tv_norm(z)
    length = z.square().sum(dim=1, keepdim=True)
    torch.testing.assert_close(n * torch.sqrt(length + reference.TV_EPS), z)
    assert torch.all(n.square().sum(dim=1) < 1)


@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("double_sym", "tanh")])
def test_tv_norm_bfloat16_cpu(layer, activation):
    x16, w16, b16 = make_inputs(2, 8, 6, 6, 3, 3, dtype=torch.bfloat16, seed=5, scale=0.6)
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x16, w16, b16))
    kw = dict(T=1.0, n_steps=4, layer=layer, activation=activation, interp="linear", norm="tv")
    gy16 = random_like(x16, seed=6)
    y16, g16 = run_block(x16, w16, b16, gy16, backend="fused", **kw)
    y32, g32 = run_block(x32, w32, b32, gy16.float(), backend="reference", **kw)
    assert_close_rel(y16, y32, tol_for(torch.bfloat16), "bf16 tv output")
    for name, gf, gr in zip(("grad x", "grad weight", "grad bias"), g16, g32):
        assert_close_rel(gf, gr, tol_for(torch.bfloat16, grad=True), f"bf16 tv {name}")


# ------------------------------------------------------------------------- the reference against docs/math.md
@pytest.mark.parametrize("N,M", [(5, 3), (4, 4), (3, 7), (6, 1), (1, 1), (1, 4), (7, 2)])
@pytest.mark.parametrize("interp", INTERPS)
def test_interpolation_matrix_matches_the_maths(N, M, interp):
    """The oracle's W[k, j] against the formulas of docs/math.md (section 1) written with T explicitly."""
    T = 2.5
    h = T / N
    W = reference.interpolation_matrix(N, M, interp)
    expect = torch.zeros(N, M, dtype=torch.float64)
    for k in range(N):
        t = k * h
        if interp == "constant" or M == 1:
            expect[k, min(math.floor(k * M / N), M - 1)] = 1.0
        else:
            s = t * (M - 1) / T
            j = min(math.floor(s), M - 2)
            a = s - j
            expect[k, j] += 1 - a
            expect[k, j + 1] += a
    torch.testing.assert_close(W, expect, rtol=0, atol=1e-12)
    torch.testing.assert_close(W.sum(1), torch.ones(N, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer", LAYERS)
def test_reference_step_matches_the_maths(layer):
    """One step of the oracle against docs/math.md written independently (explicit conv / convT, F.* activations)."""
    import torch.nn.functional as F
    x, w, b = make_inputs(2, 3, 5, 4, 1, 3, requires_grad=False)
    h = 0.7
    z = F.conv2d(x, w[0], b[0], padding=1)
    a = F.leaky_relu(z, 0.01)
    expect = x + h * a if layer == "single" else x - h * F.conv_transpose2d(a, w[0], padding=1)
    got = reference.ode_block(x, w, b, T=h, n_steps=1, layer=layer, activation="leaky_relu")
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-14)
