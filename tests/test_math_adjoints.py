"""The adjoint formulas of docs/math.md, implemented by hand and checked against PyTorch autograd.

Every formula here is written from the document, not from the code: one evaluation's vector-Jacobian product
(section 3) with explicit conv2d / conv_transpose2d / conv2d_weight calls and the activations' derivatives, the
discrete adjoint of each method (section 4) as a loop backward over the steps using only those per-evaluation
products, and the chain rule through the interpolation of the controls (section 1). The results must equal
torch.autograd through contres.reference.ode_block to 1e-10 relative in float64. Section 4's reversible
recomputation, section 5's saved layouts and section 7's O(h) gap between the continuous and the discrete
adjoint are checked here too.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

import contres
from contres import adjoint, reference

from conftest import rel_err

TOL = 1e-10  # float64, relative: max|a - ref| / max|ref|
# The presets' sections (2-6); the chains' stages (section 8) have their own checks below.
PRESET_NORMS = ("none", "tv")
PRESET_ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid")


# ------------------------------------------------------------------------------------------- problem set-up
def make_problem(B=2, C=3, H=5, W=4, M=3, k=3, seed=0, scale=0.4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    w = torch.randn(M, C, C, k, k, generator=g, dtype=torch.float64) * (scale * 3.0 / math.sqrt(C * k * k))
    b = torch.randn(M, C, generator=g, dtype=torch.float64) * scale
    gy = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (x, w, b, gy))


def W_from_formula(times, M, interp):
    """Section 1's interpolation weights at times t (fractions of T), written from the formula with floats."""
    W = torch.zeros(len(times), M, dtype=torch.float64)
    for i, t in enumerate(times):
        if interp == "constant" or M == 1:
            W[i, min(math.floor(t * M + 1e-12), M - 1)] = 1.0
        else:
            s = t * (M - 1)
            j = min(math.floor(s + 1e-12), M - 2)
            a = s - j
            W[i, j] += 1.0 - a
            W[i, j + 1] += a
    return W


def stage_fractions(N, method):
    """Section 1: euler and leapfrog evaluate at t_k = k h, rk4 at the half steps j h / 2, j = 0..2N."""
    return [j / (2 * N) for j in range(2 * N + 1)] if method == "rk4" else [k / N for k in range(N)]


# ------------------------------------------------------------------------------- one evaluation (section 3)
def act_and_derivative(name):
    """act(z) and act'(z) expressed as the document writes them (tanh, sigmoid: from a = act(z))."""
    if name == "identity":
        return (lambda z: z), (lambda z, a: torch.ones_like(z))
    if name == "relu":
        return torch.relu, (lambda z, a: (z > 0).to(z.dtype))
    if name == "leaky_relu":
        return (lambda z: torch.where(z > 0, z, 0.01 * z)), (lambda z, a: torch.where(z > 0, 1.0, reference.LEAKY_SLOPE * torch.ones_like(z)))
    if name == "tanh":
        return torch.tanh, (lambda z, a: 1 - a * a)
    if name == "sigmoid":
        return torch.sigmoid, (lambda z, a: a * (1 - a))
    raise ValueError(name)


def f_eval(U, K, b, layer, act_name, norm):
    """f(U) with the per-time kernel K and bias b (section 2), written independently of the reference."""
    pad = K.shape[-1] // 2
    act, _ = act_and_derivative(act_name)
    z = F.conv2d(U, K, b, padding=pad)
    if norm == "tv":
        z = z / torch.sqrt((z * z).sum(1, keepdim=True) + 1e-3)
    a = act(z)
    return a if layer == "single" else -F.conv_transpose2d(a, K, padding=pad)


def vjp_eval(U, K, b, w, layer, act_name, norm):
    """Section 3: given w = dL/df at U, returns (dL/dU = J^T w, dL/dK, dL/db)."""
    pad = K.shape[-1] // 2
    act, dact = act_and_derivative(act_name)
    z = F.conv2d(U, K, b, padding=pad)
    if norm == "tv":
        r = torch.sqrt((z * z).sum(1, keepdim=True) + 1e-3)
        n = z / r
    else:
        n = z
    a = act(n)
    if layer == "single":
        q = w  # dL/da
    else:
        q = -F.conv2d(w, K, padding=pad)  # dL/da of f = -convT(a, K): the adjoint of convT is conv (no bias)
    g = dact(n, a) * q  # dL/dn
    if norm == "tv":
        g = (g - n * (n * g).sum(1, keepdim=True)) / r  # (I - n n^T) / r is symmetric
    dU = F.conv_transpose2d(g, K, padding=pad)
    dK = conv2d_weight(U, K.shape, g, padding=pad)
    if layer == "double_sym":
        dK = dK + conv2d_weight(-w, K.shape, a, padding=pad)  # K inside convT(a, K): <w, convT(a, K)> = <conv(w, K), a>
    db = g.sum((0, 2, 3))
    return dU, dK, db


# --------------------------------------------------------------------------- the methods' adjoints (section 4)
def euler_adjoint(x, K, b, gy, h, layer, act, norm):
    u = [x]
    for k in range(K.shape[0]):
        u.append(u[k] + h * f_eval(u[k], K[k], b[k], layer, act, norm))
    lam, gK, gb = gy, torch.zeros_like(K), torch.zeros_like(b)
    for k in reversed(range(K.shape[0])):
        mu, gK[k], gb[k] = vjp_eval(u[k], K[k], b[k], h * lam, layer, act, norm)
        lam = lam + mu  # lam_k = lam_{k+1} + J_k^T (h lam_{k+1})
    return u[-1], lam, gK, gb


def rk4_adjoint(x, K, b, gy, h, layer, act, norm, c12=0.5):
    N = (K.shape[0] - 1) // 2
    f = lambda U, i: f_eval(U, K[i], b[i], layer, act, norm)  # noqa: E731
    u, stages = x, []
    for k in range(N):
        U1 = u
        k1 = f(U1, 2 * k)
        U2 = u + h / 2 * k1
        k2 = f(U2, 2 * k + 1)
        U3 = u + h / 2 * k2
        k3 = f(U3, 2 * k + 1)
        U4 = u + h * k3
        k4 = f(U4, 2 * k + 2)
        stages.append((U1, U2, U3, U4))
        u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    lam, gK, gb = gy, torch.zeros_like(K), torch.zeros_like(b)
    for k in reversed(range(N)):
        U1, U2, U3, U4 = stages[k]
        rows = (2 * k, 2 * k + 1, 2 * k + 1, 2 * k + 2)
        w4 = h / 6 * lam
        mu4, dK4, db4 = vjp_eval(U4, K[rows[3]], b[rows[3]], w4, layer, act, norm)
        w3 = h / 3 * lam + h * mu4
        mu3, dK3, db3 = vjp_eval(U3, K[rows[2]], b[rows[2]], w3, layer, act, norm)
        w2 = h / 3 * lam + h / 2 * mu3
        mu2, dK2, db2 = vjp_eval(U2, K[rows[1]], b[rows[1]], w2, layer, act, norm)
        w1 = h / 6 * lam + c12 * h * mu2  # c12 = 1/2; another value only to check that the test can fail
        mu1, dK1, db1 = vjp_eval(U1, K[rows[0]], b[rows[0]], w1, layer, act, norm)
        for row, dK, db in zip(rows, (dK1, dK2, dK3, dK4), (db1, db2, db3, db4)):
            gK[row] += dK
            gb[row] += db
        lam = lam + mu1 + mu2 + mu3 + mu4
    return u, lam, gK, gb


def leapfrog_states(x, K, b, h, layer, act, norm):
    u = [x, x + h * h * f_eval(x, K[0], b[0], layer, act, norm)]  # u_{-1} = u_0
    for k in range(1, K.shape[0]):
        u.append(2 * u[k] - u[k - 1] + h * h * f_eval(u[k], K[k], b[k], layer, act, norm))
    return u


def leapfrog_adjoint(x, K, b, gy, h, layer, act, norm):
    N = K.shape[0]
    u = leapfrog_states(x, K, b, h, layer, act, norm)
    a = {N: gy, N + 1: torch.zeros_like(gy)}  # a_k = dL/du_k, a_{N+1} = 0
    gK, gb = torch.zeros_like(K), torch.zeros_like(b)
    for k in reversed(range(N)):
        mu, gK[k], gb[k] = vjp_eval(u[k], K[k], b[k], h * h * a[k + 1], layer, act, norm)
        c = 2.0 if k >= 1 else 1.0
        a[k] = c * a[k + 1] - a[k + 2] + mu
    return u[N], a[0], gK, gb


ADJOINTS = {"euler": euler_adjoint, "rk4": rk4_adjoint, "leapfrog": leapfrog_adjoint}


# ----------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("method", reference.METHODS)
@pytest.mark.parametrize("N,M", [(4, 3), (5, 2), (3, 1)])
@pytest.mark.parametrize("interp", reference.INTERPS)
def test_interpolation_rows_match_formula(method, N, M, interp):
    """Section 1: W at the method's stage times, from the formula, equals the reference's matrix."""
    W = W_from_formula(stage_fractions(N, method), M, interp)
    got = reference.interpolation_matrix(N, M, interp, method=method)
    assert got.shape == (reference.n_stage_times(N, method), M)
    torch.testing.assert_close(got, W, rtol=0, atol=1e-14)


@pytest.mark.parametrize("layer", reference.LAYERS)
@pytest.mark.parametrize("act", PRESET_ACTIVATIONS)
@pytest.mark.parametrize("norm", PRESET_NORMS)
def test_one_evaluation_vjp(layer, act, norm):
    """Section 3: the hand-written J^T w, dL/dK, dL/db of one evaluation against autograd of reference.rhs."""
    x, w, b, gy = make_problem(M=1, seed=3)
    U, K, bb = (t.clone().requires_grad_() for t in (x, w[0], b[0]))
    f = reference.rhs(U, K, bb, layer, reference.activation_fn(act), norm)
    torch.testing.assert_close(f, f_eval(x, w[0], b[0], layer, act, norm), rtol=0, atol=1e-13)
    want = torch.autograd.grad(f, (U, K, bb), gy)
    got = vjp_eval(x, w[0], b[0], gy, layer, act, norm)
    for name, g, r in zip(("dL/dU", "dL/dK", "dL/db"), got, want):
        assert rel_err(g, r) <= TOL, f"{name}: {rel_err(g, r):.2e}"


def _compare_method(method, layer, act, norm, interp, N=5, M=3, T=0.9, seed=1):
    x, w, b, gy = make_problem(M=M, seed=seed)
    # autograd through the reference
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    y = reference.ode_block(xr, wr, br, T=T, n_steps=N, layer=layer, activation=act, interp=interp, norm=norm,
                            method=method)
    want = torch.autograd.grad(y, (xr, wr, br), gy)
    # the document's adjoint: per-time weights from the formula, backward loop, chain rule through W
    Wm = W_from_formula(stage_fractions(N, method), M, interp)
    K = torch.einsum("ij,j...->i...", Wm, w)
    bb = torch.einsum("ij,jc->ic", Wm, b)
    uN, gx, gK, gb = ADJOINTS[method](x, K, bb, gy, T / N, layer, act, norm)
    got = (gx, torch.einsum("ij,i...->j...", Wm, gK), torch.einsum("ij,ic->jc", Wm, gb))
    assert rel_err(uN, y) <= TOL, f"u_N: {rel_err(uN, y):.2e}"
    for name, g, r in zip(("dL/dx", "dL/dweight", "dL/dbias"), got, want):
        err = rel_err(g, r)
        assert err <= TOL, f"{method} {layer} {act} {norm} {interp} {name}: relative error {err:.2e}"


@pytest.mark.parametrize("method", reference.METHODS)
@pytest.mark.parametrize("layer", reference.LAYERS)
@pytest.mark.parametrize("act", ["tanh", "leaky_relu", "sigmoid"])
@pytest.mark.parametrize("norm", PRESET_NORMS)
@pytest.mark.parametrize("interp", reference.INTERPS)
def test_method_adjoint_matches_autograd(method, layer, act, norm, interp):
    """Section 4: the discrete adjoint of each method, by hand, equals autograd through the reference."""
    _compare_method(method, layer, act, norm, interp)


@pytest.mark.parametrize("method", reference.METHODS)
def test_method_adjoint_single_step_and_one_control(method):
    """N = 1 (leapfrog: only the c_0 = 1 step) and M = 1, where every row is the same control."""
    _compare_method(method, "double_sym", "relu", "none", "linear", N=1, M=1)
    _compare_method(method, "single", "identity", "tv", "constant", N=2, M=1)


def test_adjoint_formulas_can_fail():
    """The comparison detects a wrong formula: leapfrog with c_0 = 2 (u_{-1} treated as independent of u_0),
    and rk4 with w1 = h/6 lam + h mu2, are both far from autograd."""
    x, w, b, gy = make_problem(M=1, seed=2)
    N, T, h = 4, 1.0, 0.25
    K, bb = reference.interpolate_controls(w, b, N, "constant", "leapfrog")
    xr = x.clone().requires_grad_()
    y = reference.ode_block(xr, w, b, T=T, n_steps=N, layer="single", activation="tanh", method="leapfrog")
    (want,) = torch.autograd.grad(y, xr, gy)
    u = leapfrog_states(x, K, bb, h, "single", "tanh", "none")
    a = {N: gy, N + 1: torch.zeros_like(gy)}
    for k in reversed(range(N)):
        mu = vjp_eval(u[k], K[k], bb[k], h * h * a[k + 1], "single", "tanh", "none")[0]
        a[k] = 2 * a[k + 1] - a[k + 2] + mu
    assert rel_err(a[0], want) > 0.1
    K, bb = reference.interpolate_controls(w, b, N, "constant", "rk4")
    xr = x.clone().requires_grad_()
    y = reference.ode_block(xr, w, b, T=T, n_steps=N, layer="single", activation="tanh", method="rk4")
    (want,) = torch.autograd.grad(y, xr, gy)
    assert rel_err(rk4_adjoint(x, K, bb, gy, h, "single", "tanh", "none")[1], want) <= TOL
    assert rel_err(rk4_adjoint(x, K, bb, gy, h, "single", "tanh", "none", c12=1.0)[1], want) > 1e-4


def _recompute_leapfrog(uN1, uN, K, b, h, layer, act, norm):
    """Section 4: u_{k-1} = 2 u_k - u_{k+1} + h^2 f(u_k, t_k), from u_{N-1}, u_N down to u_0."""
    N = K.shape[0]
    rec = {N: uN, N - 1: uN1}
    for k in range(N - 1, 0, -1):
        rec[k - 1] = 2 * rec[k] - rec[k + 1] + h * h * f_eval(rec[k], K[k], b[k], layer, act, norm)
    return rec


@pytest.mark.parametrize("layer,act", [("single", "tanh"), ("double_sym", "relu")])
def test_reversible_recomputation_float64(layer, act):
    """In float64 the walk back reproduces every stored leapfrog state to rounding."""
    x, w, b, _ = make_problem(M=2, seed=4)
    N, T = 12, 1.0
    K, bb = reference.interpolate_controls(w, b, N, "linear", "leapfrog")
    u = leapfrog_states(x, K, bb, T / N, layer, act, "none")
    rec = _recompute_leapfrog(u[N - 1], u[N], K, bb, T / N, layer, act, "none")
    scale = max(t.abs().max().item() for t in u)
    for k in range(N + 1):
        assert (rec[k] - u[k]).abs().max().item() <= 1e-12 * scale, f"u_{k}"


def reversible_drift(N, dtype, seed=5, layer="double_sym", act="tanh", T=1.0):
    """max|u_0 recomputed - x| / max|x| of the walk back, all in `dtype`."""
    x, w, b, _ = make_problem(B=2, C=4, H=8, W=8, M=2, seed=seed, dtype=dtype)
    K, bb = reference.interpolate_controls(w, b, N, "linear", "leapfrog")
    u = leapfrog_states(x, K, bb, T / N, layer, act, "none")
    rec = _recompute_leapfrog(u[N - 1], u[N], K, bb, T / N, layer, act, "none")
    return ((rec[0] - x).abs().max() / x.abs().max()).item()


def test_reversible_drift_growth(capsys):
    """The drift of the float32 walk back, against N (docs/math.md section 4 quotes these numbers).

    Each rounding error made at step k reaches u_0 multiplied by about k (the recurrence e_{k-1} = 2 e_k - e_{k+1}
    has the solutions 1 and k), so the drift is at most ~ N^2 eps / 2 times the size of the states for a problem
    whose h^2 J is small; the bound asserted is 2 N^2 eps32, a loose form of that."""
    eps32 = torch.finfo(torch.float32).eps
    rows = []
    for N in (4, 16, 64, 256):
        d32, d64 = reversible_drift(N, torch.float32), reversible_drift(N, torch.float64)
        rows.append((N, d32, d64))
        assert d64 <= 1e-12
        assert d32 <= 2 * N * N * eps32, f"N={N}: float32 drift {d32:.2e} > 2 N^2 eps"
    with capsys.disabled():
        print("\nreversible drift max|u0_rec - x|/max|x| (double_sym, tanh, T=1):")
        for N, d32, d64 in rows:
            print(f"  N={N:4d}  float32 {d32:.2e}  float64 {d64:.2e}")


def test_continuous_adjoint_is_O_h_from_discrete():
    """Section 7: the Optimize-Discretize gradient differs from the exact discrete one by O(h): halving h about
    halves the gap."""
    x, w, b, gy = make_problem(B=1, C=2, H=4, W=4, M=2, seed=6)
    gaps = []
    for N in (8, 16, 32):
        kw = dict(T=1.0, n_steps=N, layer="single", activation="tanh", interp="linear")
        grads = []
        for fn in (reference.ode_block, adjoint.ode_block_continuous):
            xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
            grads.append(torch.autograd.grad(fn(xr, wr, br, **kw), (xr, wr, br), gy))
        gaps.append(max(rel_err(c, d) for c, d in zip(grads[1], grads[0])))
    ratios = [gaps[i] / gaps[i + 1] for i in range(2)]
    assert all(1.6 <= r <= 2.5 for r in ratios), f"gaps {gaps}, ratios {ratios}"


# ------------------------------------------------------------------------------- what is kept (section 5)
needs_ext = pytest.mark.skipif(not contres.build_info().get("cpu_kernels"), reason="contres built without kernels")


@needs_ext
@pytest.mark.parametrize("method", reference.METHODS)
@pytest.mark.parametrize("layer,act,norm,kind", [("single", "relu", "none", "mask"),
                                                 ("single", "identity", "none", "none"),
                                                 ("single", "tanh", "none", "value"),
                                                 ("double_sym", "leaky_relu", "none", "value"),
                                                 ("double_sym", "identity", "tv", "pre")])
def test_saved_layout_as_documented(method, layer, act, norm, kind):
    """Section 5: the stack `states` holds the documented states in the documented order, and `aux` has the
    documented kind, count and layout (checked against the document's own forward)."""
    N, h = 5, 0.2
    x, w, b, _ = make_problem(B=2, C=3, H=4, W=5, M=reference.n_stage_times(N, method), seed=7)
    B, C, H, W = x.shape
    out, states, aux = torch.ops.contres.ode_forward(x, w, b, h, layer, act, 0, norm, method)
    f = lambda U, i: f_eval(U, w[i], b[i], layer, act, norm)  # noqa: E731
    if method == "rk4":
        expect, inputs, u = [], [], x
        for k in range(N):
            U2 = u + h / 2 * f(u, 2 * k)
            U3 = u + h / 2 * f(U2, 2 * k + 1)
            U4 = u + h * f(U3, 2 * k + 1)
            inputs += [(u, 2 * k), (U2, 2 * k + 1), (U3, 2 * k + 1), (U4, 2 * k + 2)]
            u = u + h / 6 * (f(u, 2 * k) + 2 * f(U2, 2 * k + 1) + 2 * f(U3, 2 * k + 1) + f(U4, 2 * k + 2))
            expect += [U2, U3, U4] + ([u] if k < N - 1 else [])
    elif method == "euler":
        us = [x]
        for k in range(N):
            us.append(us[k] + h * f(us[k], k))
        expect, inputs = us[1:N], [(us[k], k) for k in range(N)]
    else:
        us = leapfrog_states(x, w, b, h, layer, act, norm)
        expect, inputs = us[1:N], [(us[k], k) for k in range(N)]
    assert states.shape == (len(expect), B, C, H, W)
    assert states.stride() == (B * H * W * C, H * W * C, 1, W * C, C)  # channels_last stack
    for i, e in enumerate(expect):
        assert rel_err(states[i], e) <= 1e-12, f"states[{i}]"
    S = 4 if method == "rk4" else 1
    zs = []
    for U, i in inputs:
        z = F.conv2d(U, w[i], b[i], padding=1)
        zs.append(z)
    if kind == "none":
        assert aux == []
        return
    [aux] = aux  # a preset keeps one slot
    assert aux.shape[0] == S * N
    if kind == "mask":
        nbytes = (B * H * W * C + 7) // 8
        assert aux.dtype == torch.uint8 and aux.shape == (S * N, nbytes)
        for e, z in enumerate(zs):
            bits = (z.permute(0, 2, 3, 1).reshape(-1) > 0).to(torch.uint8)  # channels_last element order
            bits = torch.cat([bits, bits.new_zeros(8 * nbytes - bits.numel())]).view(-1, 8)
            packed = (bits << torch.arange(8, dtype=torch.uint8)).sum(1).to(torch.uint8)  # bit t of byte j: 8j + t
            assert torch.equal(aux[e], packed), f"aux[{e}]"
    elif kind == "value":
        assert aux.shape == (S * N, B, C, H, W) and aux.stride() == states.stride()
        actf, _ = act_and_derivative(act)
        for e, z in enumerate(zs):
            assert rel_err(aux[e], actf(z)) <= 1e-12, f"aux[{e}]"
    else:  # pre: z itself, (n, B, H, W, C) contiguous
        assert aux.shape == (S * N, B, H, W, C) and aux.is_contiguous()
        for e, z in enumerate(zs):
            assert rel_err(aux[e], z.permute(0, 2, 3, 1)) <= 1e-12, f"aux[{e}]"


@needs_ext
@pytest.mark.parametrize("method,s,kept", [("euler", 2, [2, 4]), ("rk4", 2, [2, 4]), ("leapfrog", 1, [1, 2, 3, 4]),
                                           ("leapfrog", 2, [1, 2, 3, 4]), ("leapfrog", 3, [2, 3]),
                                           ("euler", 5, []), ("leapfrog", 4, [3, 4])])
def test_checkpoint_and_reversible_slots_as_documented(method, s, kept):
    """Section 5/6: stride s keeps u_s, u_2s, ... (u_js with j s <= N - 1); leapfrog with s > 1 keeps the
    pairs (u_{js-1}, u_js); memory='reversible' keeps (u_{N-1}, u_N)."""
    N, h = 5, 0.2
    x, w, b, _ = make_problem(B=1, C=2, H=3, W=3, M=reference.n_stage_times(N, method), seed=8)
    if method == "leapfrog":
        us = leapfrog_states(x, w, b, h, "single", "tanh", "none")
    else:
        us = [x] + [reference.ode_block_steps(x, w[: (2 * n + 1 if method == "rk4" else n)],
                                              b[: (2 * n + 1 if method == "rk4" else n)], T=h * n, layer="single",
                                              activation="tanh", method=method) for n in range(1, N + 1)]
    _, states, aux = torch.ops.contres.ode_forward(x, w, b, h, "single", "tanh", s, "none", method)
    assert aux == [] and states.shape[0] == len(kept)
    for i, k in enumerate(kept):
        assert rel_err(states[i], us[k]) <= 1e-12, f"slot {i} should be u_{k}"
    if method == "leapfrog":
        _, states, aux = torch.ops.contres.ode_forward(x, w, b, h, "single", "tanh", 0, "none", method, "reversible")
        assert states.shape[0] == 2 and aux == []
        assert rel_err(states[0], us[N - 1]) <= 1e-12 and rel_err(states[1], us[N]) <= 1e-12


# ------------------------------------------------------------------------------- chains of stages (section 8)
def _vjp(f, inputs, d):
    """Autograd's vector-Jacobian products of f at inputs under d."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    return torch.autograd.grad(f(*inputs), inputs, d)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm_adjoint_as_documented(groups):
    """Section 8.1: dx = rho (d' - mean(d') - xhat mean(d' xhat)), d' = gamma d; dgamma = sum d xhat, dbeta = sum d."""
    g = torch.Generator().manual_seed(groups)
    x = torch.randn(3, 6, 4, 5, generator=g, dtype=torch.float64) * 2 + 1
    gamma, beta = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    d = torch.randn(3, 6, 4, 5, generator=g, dtype=torch.float64)
    eps = 1e-5
    xg = x.view(3, groups, -1)
    mu, var = xg.mean(-1, keepdim=True), xg.var(-1, unbiased=False, keepdim=True)
    rho = (var + eps).rsqrt()
    xhat = ((xg - mu) * rho).view_as(x)
    dp = d * gamma.view(1, -1, 1, 1)
    dpg, xhg = dp.view(3, groups, -1), xhat.view(3, groups, -1)
    dx = (rho * (dpg - dpg.mean(-1, keepdim=True) - xhg * (dpg * xhg).mean(-1, keepdim=True))).view_as(x)
    want = _vjp(lambda x, w, b: F.group_norm(x, groups, w, b, eps), [x, gamma, beta], d)
    for got, ref in zip((dx, (d * xhat).sum((0, 2, 3)), d.sum((0, 2, 3))), want):
        assert rel_err(got, ref) <= TOL


def test_tv_norm_affine_adjoint_as_documented():
    """Section 8.1: dx = (d' - n <n, d'>_c) / r with d' = gamma d; dgamma = sum d n, dbeta = sum d."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    gamma, beta = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    d = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    eps = 1e-4
    r = torch.sqrt((x * x).sum(1, keepdim=True) + eps)
    n = x / r
    dp = d * gamma.view(1, -1, 1, 1)
    dx = (dp - n * (n * dp).sum(1, keepdim=True)) / r

    def tv(x, w, b):
        return x * torch.rsqrt(x.square().sum(1, keepdim=True) + eps) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    want = _vjp(tv, [x, gamma, beta], d)
    for got, ref in zip((dx, (d * n).sum((0, 2, 3)), d.sum((0, 2, 3))), want):
        assert rel_err(got, ref) <= TOL


def test_softplus_derivative_as_documented():
    """Section 8.1: softplus' = e^x / (e^x + 1), 1 above the threshold 20 (torch's beta 1, threshold 20)."""
    x = torch.linspace(-30, 30, 241, dtype=torch.float64)
    df = torch.where(x > 20, torch.ones_like(x), torch.exp(x) / (torch.exp(x) + 1))
    [want] = _vjp(lambda x: F.softplus(x, beta=1, threshold=20), [x], torch.ones_like(x))
    assert rel_err(df, want) <= TOL


def test_conv_t_weight_gradient_as_documented():
    """Section 8.1: <d, convT(x, K)> = <K * d, x>, so dK of convT(x, K) is wgrad(d, x)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 5, 4, generator=g, dtype=torch.float64)
    K = torch.randn(6, 3, 3, 3, generator=g, dtype=torch.float64)  # a conv's kernel: 3 -> 6 channels
    d = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    dx, dK = _vjp(lambda x, K: F.conv_transpose2d(x, K, padding=1), [x, K], d)
    assert rel_err(F.conv2d(d, K, padding=1), dx) <= TOL
    assert rel_err(conv2d_weight(d, K.shape, x, padding=1), dK) <= TOL


@pytest.mark.parametrize("k", [1, 3, 5])
def test_time_channel_as_documented(k):
    """Section 8.1: conv(cat([t 1, x]), [K_t, K]) + b = K * x + b + t M with M = K_t * 1 (zero padding), and the
    time kernel's gradient is t wgrad(1, sum_B d)."""
    g = torch.Generator().manual_seed(k)
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    Kfull = torch.randn(5, 5, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    d = torch.randn(3, 5, 5, 6, generator=g, dtype=torch.float64)
    t = 0.375
    pad = k // 2

    def concat_conv(x, K, b):
        return F.conv2d(torch.cat([torch.full_like(x[:, :1], t), x], 1), K, b, padding=pad)
    ones = torch.ones(1, 1, 5, 6, dtype=torch.float64)
    M = F.conv2d(ones, Kfull[:, :1], padding=pad)
    assert rel_err(F.conv2d(x, Kfull[:, 1:], b, padding=pad) + t * M, concat_conv(x, Kfull, b)) <= TOL
    _, dK, _ = _vjp(concat_conv, [x, Kfull, b], d)
    dKt = t * conv2d_weight(ones, Kfull[:, :1].shape, d.sum(0, keepdim=True), padding=pad)
    assert rel_err(dKt, dK[:, :1]) <= TOL
    assert rel_err(conv2d_weight(x, Kfull[:, 1:].shape, d, padding=pad), dK[:, 1:]) <= TOL
