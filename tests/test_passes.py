"""Each CPU elementwise pass alone (the private ops contres::_forward_pass, _gate_pass, _tv_forward_pass,
_tv_gate_pass), in every dtype pair it runs in -- float64, float32, bf16, fp16 and the mixed pairs (float32 state,
bf16 / fp16 convolution operands) -- against its formula (kernels.h) computed in float64 from the same inputs.

The passes compute in float (double for float64) and round once per stored element, so every output is held to
one rounding of its own dtype (relative to the magnitude of the terms it sums) plus a few float ulps for the
vectorised tanh and sigmoid; the masks are exact. 16 * 5 + 11 elements run the 16-element blocks and the scalar
tail; C = 12 the per-lane bias sums and the scalar tv loops, C = 16 the vectorised ones.
"""
from __future__ import annotations

import pytest
import torch

import contres  # noqa: F401
from contres.reference import LEAKY_SLOPE, TV_EPS

ops = torch.ops.contres
PAIRS = {"f64": (torch.float64, torch.float64), "f32": (torch.float32, torch.float32),
         "bf16": (torch.bfloat16, torch.bfloat16), "fp16": (torch.float16, torch.float16),
         "mixed-bf16": (torch.float32, torch.bfloat16), "mixed-fp16": (torch.float32, torch.float16)}
N_ELEMS = 16 * 5 + 11


def eps(dtype):
    """Half an ulp (one rounding) relative, plus the float arithmetic before it."""
    return torch.finfo(dtype).eps / 2 + (1e-14 if dtype == torch.float64 else 4 * torch.finfo(torch.float32).eps)


def act64(name, z):
    return {"identity": lambda: z, "relu": lambda: z.clamp_min(0),
            "leaky_relu": lambda: torch.where(z > 0, z, LEAKY_SLOPE * z), "tanh": lambda: z.tanh(),
            "sigmoid": lambda: z.sigmoid()}[name]()


def dact64(name, a):
    """act' from a = act(z), as the passes form it."""
    return {"identity": lambda: torch.ones_like(a), "relu": lambda: (a > 0).double(),
            "leaky_relu": lambda: torch.where(a > 0, torch.ones_like(a), torch.full_like(a, LEAKY_SLOPE)),
            "tanh": lambda: 1 - a * a,
            "sigmoid": lambda: a * (1 - a)}[name]()


def dact_terms64(name, a):
    """The magnitude of the terms the passes add to form act'(a) (1 - a*a cancels where |a| ~ 1)."""
    return {"tanh": lambda: 1 + a * a, "sigmoid": lambda: a.abs() * (1 + a.abs())}.get(name, lambda: dact64(name, a))()


def rand(n, dtype, seed):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def check(got, want, scale, dtype, what):
    """|got - want| <= eps(dtype) * scale elementwise (scale: the magnitude of the terms that made want)."""
    err = (got.double() - want).abs()
    bound = eps(dtype) * scale + 1e-30
    assert bool((err <= bound).all()), f"{what}: max error / bound {(err / bound).max().item():.2f}"


def mask_bits(z, act):
    """The Mask aux of z: bit t of byte j is mask_bit(z[8j + t]) (relu: !(z <= 0); leaky_relu: z > 0)."""
    bits = ~(z <= 0) if act == "relu" else z > 0
    padded = torch.zeros((z.numel() + 7) // 8 * 8, dtype=torch.bool)
    padded[: z.numel()] = bits
    weights = 2 ** torch.arange(8)
    return (padded.view(-1, 8).long() * weights).sum(1).to(torch.uint8)


AUX_OF = {"identity": "none", "relu": "mask", "leaky_relu": "mask", "tanh": "value", "sigmoid": "value"}


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("act", list(AUX_OF))
@pytest.mark.parametrize("form", ["euler", "leapfrog", "rk4_stage", "aux_only"])
def test_forward_pass(pair, act, form):
    S, L = PAIRS[pair]
    mixed = S != L
    n = N_ELEMS
    z, x0, x1, y0 = rand(n, L, 1), rand(n, S, 2), rand(n, S, 3), rand(n, S, 4)
    kind = AUX_OF[act]
    aux = torch.zeros((n + 7) // 8, dtype=torch.uint8) if kind == "mask" else torch.empty(n, dtype=L)
    c0, c1, alpha, beta = (2.0, -1.0, 0.3, 0.0) if form == "leapfrog" else (1.0, 0.0, 0.25, 0.125)
    out = torch.empty(n, dtype=S) if form in ("euler", "leapfrog") else None
    out_low = torch.empty(n, dtype=L) if mixed and form != "aux_only" else None
    out2 = torch.empty(n, dtype=S) if form == "rk4_stage" else None
    x0_arg = x0 if form != "aux_only" else None
    if form == "rk4_stage" and not mixed:  # the stage input is out itself when there is one dtype
        out = torch.empty(n, dtype=S)
    ops._forward_pass(z, act, kind, aux if kind != "none" else None, out, x0_arg, x1 if form == "leapfrog" else None,
                      c0, c1, alpha, out_low, out2, y0 if out2 is not None else None, beta)
    f = act64(act, z.double())
    if kind == "mask":
        assert torch.equal(aux, mask_bits(z, act)), "mask"
    elif kind == "value":
        check(aux, f, f.abs(), L, "value aux")
    if form == "aux_only":
        return
    x1_term = c1 * x1.double() if form == "leapfrog" else 0.0
    want = c0 * x0.double() + x1_term + alpha * f
    scale = (c0 * x0.double()).abs() + (x1_term.abs() if form == "leapfrog" else 0.0) + (alpha * f).abs()
    if out is not None:
        check(out, want, scale, S, "out")
    if out_low is not None:
        check(out_low, want, scale, L, "out_low")
    if out2 is not None:
        check(out2, y0.double() + beta * f, y0.double().abs() + (beta * f).abs(), S, "out2")


@pytest.mark.parametrize("pair", ["f32", "bf16"])
def test_forward_pass_aliasing(pair):
    """out may alias x0 (and x1), out2 y0: every element is read before it is written."""
    S, L = PAIRS[pair]
    z, x0, y0 = rand(N_ELEMS, L, 1), rand(N_ELEMS, S, 2), rand(N_ELEMS, S, 3)
    want = x0.double() + 0.5 * z.double().tanh()
    want2 = y0.double() + 0.25 * z.double().tanh()
    ops._forward_pass(z, "tanh", "none", None, x0, x0, None, 1.0, 0.0, 0.5, None, y0, y0, 0.25)
    check(x0, want, want.abs() + 1, S, "out = x0")
    check(y0, want2, want2.abs() + 1, S, "out2 = y0")


@pytest.mark.parametrize("C", [12, 16])
@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("act", list(AUX_OF))
@pytest.mark.parametrize("with_mu", [False, True])
def test_gate_pass(pair, act, C, with_mu):
    S, L = PAIRS[pair]
    n = C * 9 + (C // 2 if C == 12 else 0)  # C = 12: 114 elements, the tail and per-lane sums; C = 16: 144
    n -= n % C
    lam, mu, sum_in = rand(n, S, 1), rand(n, L, 2), rand(n, S, 3)
    z = rand(n, L, 4)
    kind = AUX_OF[act]
    if kind == "mask":
        aux, d = mask_bits(z, act), dact64(act, act64(act, z.double()))
        d_terms = d.abs()
    elif kind == "value":
        aux = act64(act, z.double()).to(L)
        d, d_terms = dact64(act, aux.double()), dact_terms64(act, aux.double())
    else:
        aux, d = None, torch.ones(n, dtype=torch.float64)
        d_terms = d
    g, sum_out = torch.empty(n, dtype=L), torch.empty(n, dtype=S)
    bias = torch.empty(C, dtype=torch.float64 if S == torch.float64 else torch.float32)
    c_mu, scale = 1.5, -0.25
    reduced = ops._gate_pass(lam, mu if with_mu else None, c_mu, aux, act, kind, scale, g,
                             sum_in if with_mu else None, sum_out if with_mu else None, bias, C)
    assert reduced
    v = lam.double() + (c_mu * mu.double() if with_mu else 0.0)
    want = scale * d * v
    scale_g = abs(scale) * d_terms * (lam.double().abs() + (abs(c_mu) * mu.double().abs() if with_mu else 0.0))
    check(g, want, scale_g, L, "g")
    if with_mu:
        check(sum_out, sum_in.double() + mu.double(), sum_in.double().abs() + mu.double().abs(), S, "sum_out")
    # the bias gradient: the unrounded g summed per channel in float (double for float64)
    want_b = want.view(-1, C).sum(0)
    bound = scale_g.view(-1, C).sum(0) * (1e-13 if S == torch.float64 else 1e-5)
    assert bool(((bias.double() - want_b).abs() <= bound + 1e-30).all()), "bias"


@pytest.mark.parametrize("pair", ["f64", "f32", "bf16"])
def test_gate_pass_aliasing(pair):
    """g may alias lam; sum_out may alias mu or sum_in (one dtype)."""
    S, _ = PAIRS[pair]
    n, C = 16 * 4 + 5, 3
    n -= n % C
    lam, mu = rand(n, S, 1), rand(n, S, 2)
    want_g, want_s = 0.5 * (lam.double() + mu.double()), lam.double() + mu.double()
    ops._gate_pass(lam, mu, 1.0, None, "identity", "none", 0.5, lam, None, mu, None, C)
    check(lam, want_g, want_s.abs() + 1, S, "g = lam")
    check(mu, want_s, want_s.abs() + 1, S, "sum_out = mu")


def tv_reference(z, C, act):
    """n = z / r, r = sqrt(sum_c z^2 + eps), per pixel of C; a = act(n)."""
    zp = z.double().view(-1, C)
    r = (zp.square().sum(1, keepdim=True) + TV_EPS).sqrt()
    n = zp / r
    return n, r, act64(act, n)


@pytest.mark.parametrize("C", [12, 16])
@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_tv_forward_pass(pair, act, C):
    S, L = PAIRS[pair]
    mixed = S != L
    n = C * 7
    z, x0, x1 = rand(n, L, 1), rand(n, S, 2), rand(n, S, 3)
    out, keep = torch.empty(n, dtype=S), torch.empty(n, dtype=L)
    out_low = torch.empty(n, dtype=L) if mixed else None
    ops._tv_forward_pass(z, C, act, out, x0, x1, 2.0, -1.0, 0.3, out_low, None, None, 0.0, None, keep)
    _, _, a = tv_reference(z, C, act)
    a = a.flatten()
    want = 2 * x0.double() - x1.double() + 0.3 * a
    scale = 2 * x0.double().abs() + x1.double().abs() + 0.3 * a.abs() + 1e-3
    check(out, want, scale, S, "out")
    if mixed:
        check(out_low, want, scale, L, "out_low")
    assert torch.equal(keep, z), "z_keep"
    # double_sym's use: a_out in place of z
    z2 = z.clone()
    ops._tv_forward_pass(z2, C, act, None, None, None, 1.0, 0.0, 0.0, None, None, None, 0.0, z2, keep)
    check(z2, a, a.abs() + 1e-3, L, "a_out = z")
    assert torch.equal(keep, z)


@pytest.mark.parametrize("C", [12, 16])
@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_tv_gate_pass(pair, act, C):
    S, L = PAIRS[pair]
    n = C * 7
    lam, mu, z, sum_in = rand(n, S, 1), rand(n, L, 2), rand(n, L, 3), rand(n, S, 4)
    g, sum_out, a_out = torch.empty(n, dtype=L), torch.empty(n, dtype=S), torch.empty(n, dtype=L)
    c_mu, scale = 3.0, 0.5
    ops._tv_gate_pass(lam, mu, c_mu, z, C, act, scale, g, sum_in, sum_out, a_out)
    nn, r, a = tv_reference(z, C, act)
    v = (lam.double() + c_mu * mu.double()).view(-1, C)
    w = scale * dact64(act, a) * v
    want = (w - nn * (nn * w).sum(1, keepdim=True)) / r
    bound_scale = (w.abs() + nn.abs() * (nn * w).abs().sum(1, keepdim=True)) / r
    check(g, want.flatten(), 4 * bound_scale.flatten() + 1e-6, L, "g")
    check(sum_out, sum_in.double() + mu.double(), sum_in.double().abs() + mu.double().abs(), S, "sum_out")
    check(a_out, a.flatten(), a.abs().flatten() + 1e-3, L, "a_out")


def test_pass_ops_check_their_operands():
    """The private ops refuse what the passes cannot index: wrong sizes, non-contiguous data, a short mask."""
    z, out = torch.randn(32), torch.empty(32)
    with pytest.raises(ValueError, match="x0 must be a contiguous tensor on cpu of 32 elements"):
        ops._forward_pass(z, "relu", "none", None, out, torch.randn(31), None, 1.0, 0.0, 1.0, None, None, None, 0.0)
    with pytest.raises(ValueError, match="out must be a contiguous"):
        ops._forward_pass(z, "relu", "none", None, torch.empty(64)[::2], z, None, 1.0, 0.0, 1.0, None, None, None,
                          0.0)
    with pytest.raises(ValueError, match="aux must be a contiguous tensor on cpu of 4 elements"):
        ops._forward_pass(z, "relu", "mask", torch.zeros(3, dtype=torch.uint8), None, None, None, 1.0, 0.0, 1.0,
                          None, None, None, 0.0)
    with pytest.raises(ValueError, match="channels must divide"):
        ops._gate_pass(z, None, 1.0, None, "identity", "none", 1.0, out, None, None, torch.empty(5), 5)
    with pytest.raises(ValueError, match="out needs x0"):
        ops._forward_pass(z, "relu", "none", None, out, None, None, 1.0, 0.0, 1.0, None, None, None, 0.0)
    with pytest.raises(ValueError, match="'mask' needs an aux"):
        ops._gate_pass(z, None, 1.0, None, "relu", "mask", 1.0, out, None, None, None, 4)
    with pytest.raises(NotImplementedError, match="Meta"):  # another device: the dispatcher refuses it first
        ops._forward_pass(z, "relu", "none", None, out, z.to("meta"), None, 1.0, 0.0, 1.0, None, None, None, 0.0)
