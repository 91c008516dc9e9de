"""Bad inputs give clear errors (type + a message naming the argument) and leave the inputs untouched; edge cases
(empty batch, channels_last / non-contiguous views, NaN, backend selection, threads) give the reference's answer."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import contres
from contres import ODEBlock
from conftest import (CUDA_OK, assert_bitwise_equal, assert_close_rel, make_inputs, random_like, rel_err,
                      run_block, tol_for)

F = contres.functional


def _good(dtype=torch.float32, device="cpu"):
    # B=2, C=3, H=4, W=5, M=2 controls, k=3
    return make_inputs(2, 3, 4, 5, 2, 3, dtype=dtype, device=device, seed=7, requires_grad=False)


def _expect_error(fn, tensors, exc, match):
    """fn() raises exc with a message matching `match`; every tensor is bit-for-bit unchanged afterwards."""
    before = [t.detach().clone() for t in tensors]
    with pytest.raises(exc, match=match):
        fn()
    for i, (t, b) in enumerate(zip(tensors, before)):
        assert_bitwise_equal(t, b, f"input {i}")


# ------------------------------------------------------------------------------------------- functional API
def _functional_cases():
    x, w, b = _good()
    kw = dict(T=1.0, n_steps=3)
    cases = {
        # name: (x, w, b, kwargs, exception, match)
        "x rank 3": (x[0], w, b, kw, ValueError, r"x must be 4-D"),
        "x rank 5": (x[None], w, b, kw, ValueError, r"x must be 4-D"),
        "x not a tensor": (x.tolist(), w, b, kw, TypeError, r"x must be a torch\.Tensor"),
        "bias not a tensor": (x, w, b.tolist(), kw, TypeError, r"bias must be a torch\.Tensor"),
        "channel mismatch": (x[:, :2], w, b, kw, ValueError, r"weight must have shape .*2 channels"),
        "integer x": (x.to(torch.int32), w.to(torch.int32), b.to(torch.int32), kw, TypeError,
                      r"x must be a floating-point"),
        "bool x": (x > 0, w, b, kw, TypeError, r"x must be a floating-point"),
        "complex x": (x.to(torch.complex64), w.to(torch.complex64), b.to(torch.complex64), kw, TypeError,
                      r"x must be a floating-point"),
        "weight dtype mismatch": (x, w.double(), b, kw, TypeError, r"weight has dtype torch\.float64"),
        "bias dtype mismatch": (x, w, b.double(), kw, TypeError, r"bias has dtype torch\.float64"),
        "weight on another device": (x, w.to("meta"), b, kw, RuntimeError, r"weight is on meta"),
        "bias on another device": (x, w, b.to("meta"), kw, RuntimeError, r"bias is on meta"),
        "n_steps 0": (x, w, b, dict(T=1.0, n_steps=0), ValueError, r"n_steps must be an integer >= 1"),
        "n_steps -2": (x, w, b, dict(T=1.0, n_steps=-2), ValueError, r"n_steps"),
        "n_steps float": (x, w, b, dict(T=1.0, n_steps=3.0), ValueError, r"n_steps"),
        "n_steps True": (x, w, b, dict(T=1.0, n_steps=True), ValueError, r"n_steps"),
        "n_controls 0": (x, w[:0], b[:0], kw, ValueError, r"n_controls >= 1"),
        "T 0": (x, w, b, dict(T=0, n_steps=3), ValueError, r"T must be a positive finite number"),
        "T -1": (x, w, b, dict(T=-1.0, n_steps=3), ValueError, r"T must be"),
        "T nan": (x, w, b, dict(T=math.nan, n_steps=3), ValueError, r"T must be"),
        "T inf": (x, w, b, dict(T=math.inf, n_steps=3), ValueError, r"T must be"),
        "T True": (x, w, b, dict(T=True, n_steps=3), ValueError, r"T must be"),
        "T string": (x, w, b, dict(T="1", n_steps=3), ValueError, r"T must be"),
        "unknown layer": (x, w, b, dict(kw, layer="triple"), ValueError, r"layer must be one of"),
        "unknown activation": (x, w, b, dict(kw, activation="gelu"), ValueError, r"activation must be one of"),
        "activation wrong case": (x, w, b, dict(kw, activation="ReLU"), ValueError, r"activation"),
        "unknown interp": (x, w, b, dict(kw, interp="cubic"), ValueError, r"interp must be one of"),
        "unknown backend": (x, w, b, dict(kw, backend="triton"), ValueError, r"backend must be one of"),
        "unknown norm": (x, w, b, dict(kw, norm="batch"), ValueError, r"norm must be one of"),
        "layer not a string": (x, w, b, dict(kw, layer=1), ValueError, r"layer"),
        "even kernel": (x, w[..., :2, :2], b, kw, ValueError, r"kernel size must be odd"),
        "non-square kernel": (x, w[..., :1], b, kw, ValueError, r"weight must have shape"),
        "weight rank 4": (x, w[0], b, kw, ValueError, r"weight must have shape"),
        "weight in/out channels": (x, w[:, :, :2], b, kw, ValueError, r"weight must have shape"),
        "bias controls mismatch": (x, w, b[:1], kw, ValueError, r"bias must have shape"),
        "bias channels mismatch": (x, w, b[:, :2], kw, ValueError, r"bias must have shape"),
        "bias rank 1": (x, w, b[0], kw, ValueError, r"bias must have shape"),
        "checkpoint -1": (x, w, b, dict(kw, checkpoint=-1), ValueError, r"checkpoint must be"),
        "checkpoint 1.5": (x, w, b, dict(kw, checkpoint=1.5), ValueError, r"checkpoint must be"),
        "checkpoint string": (x, w, b, dict(kw, checkpoint="yes"), ValueError, r"checkpoint must be"),
    }
    return cases


FUNCTIONAL_CASES = _functional_cases()


@pytest.mark.parametrize("backend", ["fused", "reference", "auto"])
@pytest.mark.parametrize("name", list(FUNCTIONAL_CASES))
def test_functional_bad_input(name, backend):
    x, w, b, kw, exc, match = FUNCTIONAL_CASES[name]
    kw = dict(kw)
    kw.setdefault("backend", backend)
    tensors = [t for t in (x, w, b) if isinstance(t, torch.Tensor)]
    _expect_error(lambda: F.ode_block(x, w, b, **kw), tensors, exc, match)


def test_fused_backend_on_device_without_kernels():
    """backend='fused' on a device this build has no kernels for (meta) names the backend in the error."""
    x, w, b = (t.to("meta") for t in _good())
    with pytest.raises(RuntimeError, match=r"backend='fused' is not available for device meta"):
        F.ode_block(x, w, b, T=1.0, n_steps=2, backend="fused")


@pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA GPU and CUDA kernels (cpu/meta mismatch is tested above)")
def test_functional_cpu_cuda_mismatch():
    x, w, b = _good()
    _expect_error(lambda: F.ode_block(x, w.cuda(), b, n_steps=2, backend="fused"), [x, w, b], RuntimeError,
                  r"weight is on cuda")


# -------------------------------------------------------------------------------------------------- ODEBlock
CTOR_CASES = {
    # name: (kwargs, exception, match)
    "channels 0": (dict(channels=0), ValueError, r"channels must be an integer >= 1"),
    "n_steps 0": (dict(n_steps=0), ValueError, r"n_steps must be an integer >= 1"),
    "n_steps float": (dict(n_steps=2.5), ValueError, r"n_steps"),
    "n_controls 0": (dict(n_controls=0), ValueError, r"n_controls must be an integer >= 1"),
    "n_controls -1": (dict(n_controls=-1), ValueError, r"n_controls"),
    "kernel even": (dict(kernel_size=4), ValueError, r"kernel_size must be odd"),
    "kernel 0": (dict(kernel_size=0), ValueError, r"kernel_size"),
    "T 0": (dict(T=0.0), ValueError, r"T must be a positive finite number"),
    "T -1": (dict(T=-1), ValueError, r"T must be"),
    "T nan": (dict(T=math.nan), ValueError, r"T must be"),
    "T inf": (dict(T=math.inf), ValueError, r"T must be"),
    "T True": (dict(T=True), ValueError, r"T must be"),
    "layer": (dict(layer="double"), ValueError, r"layer must be one of"),
    "activation": (dict(activation="softplus"), ValueError, r"activation must be one of"),
    "interp": (dict(interp="spline"), ValueError, r"interp must be one of"),
    "backend": (dict(backend="cuda"), ValueError, r"backend must be one of"),
    "norm": (dict(norm="layer"), ValueError, r"norm must be one of"),
    "checkpoint -3": (dict(checkpoint=-3), ValueError, r"checkpoint must be"),
    "checkpoint float": (dict(checkpoint=0.5), ValueError, r"checkpoint must be"),
}


@pytest.mark.parametrize("name", list(CTOR_CASES))
def test_block_constructor_bad_argument(name):
    kwargs, exc, match = CTOR_CASES[name]
    kwargs = dict(dict(channels=3, n_steps=3), **kwargs)
    with pytest.raises(exc, match=match):
        ODEBlock(**kwargs)


BLOCK_FORWARD_CASES = {
    # name: (transform of a good x, exception, match)
    "channel mismatch": (lambda x: x[:, :2], ValueError, r"weight must have shape .*2 channels"),
    "x rank 3": (lambda x: x[0], ValueError, r"x must be 4-D"),
    "integer x": (lambda x: x.to(torch.int64), TypeError, r"x must be a floating-point"),
    "dtype mismatch": (lambda x: x.double(), TypeError,
                       r"weight has dtype torch\.float32 but x has dtype torch\.float64"),
    "x on meta": (lambda x: x.to("meta"), RuntimeError, r"weight is on cpu but x is on meta"),
}


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("name", list(BLOCK_FORWARD_CASES))
def test_block_forward_bad_input(name, backend):
    block = ODEBlock(3, n_steps=3, n_controls=2, backend=backend)
    params = [p.detach().clone() for p in block.parameters()]
    transform, exc, match = BLOCK_FORWARD_CASES[name]
    bad = transform(_good()[0])
    _expect_error(lambda: block(bad), [bad], exc, match)
    for p, p0 in zip(block.parameters(), params):
        assert_bitwise_equal(p, p0, "parameter")


# --------------------------------------------------------------------------------------------- the raw ops
def _op_cases():
    x, w, b = _good()  # per-step weights: N = 2
    h, good = 0.5, ("single", "relu", 0)
    return {
        # name: (args, exception, match)
        "x rank 3": ((x[0], w, b, h, *good), ValueError, r"x must be 4-D"),
        "weight rank 4": ((x, w[0], b, h, *good), ValueError, r"weight must be 5-D"),
        "bias rank 1": ((x, w, b[0], h, *good), ValueError, r"bias must be 2-D"),
        "integer x": ((x.int(), w.int(), b.int(), h, *good), TypeError, r"x must be a floating tensor"),
        "dtype mismatch": ((x, w.double(), b, h, *good), TypeError, r"weight and bias must have x's dtype"),
        "channel mismatch": ((x[:, :2], w, b, h, *good), ValueError, r"weight must be \(rows, C, C, k, k\)"),
        "even kernel": ((x, w[..., :2, :2], b, h, *good), ValueError, r"odd k"),
        "non-square kernel": ((x, w[..., :1], b, h, *good), ValueError, r"weight must be"),
        "no steps": ((x, w[:0], b[:0], h, *good), ValueError, r"n_steps"),
        "bias steps mismatch": ((x, w, b[:1], h, *good), ValueError, r"bias must be \(2, 3\)"),
        "bias channels mismatch": ((x, w, b[:, :2], h, *good), ValueError, r"bias must be \(2, 3\)"),
        "h 0": ((x, w, b, 0.0, *good), ValueError, r"h must be a positive finite step"),
        "h -1": ((x, w, b, -1.0, *good), ValueError, r"h must be"),
        "h nan": ((x, w, b, math.nan, *good), ValueError, r"h must be"),
        "h inf": ((x, w, b, math.inf, *good), ValueError, r"h must be"),
        "unknown layer": ((x, w, b, h, "triple", "relu", 0), ValueError, r"layer must be one of"),
        "unknown activation": ((x, w, b, h, "single", "elu", 0), ValueError, r"activation must be one of"),
        "checkpoint -1": ((x, w, b, h, "single", "relu", -1), ValueError, r"checkpoint must be >= 0"),
        "unknown norm": ((x, w, b, h, "single", "relu", 0, "l2"), ValueError, r"norm must be one of none, tv"),
    }


OP_CASES = _op_cases()


@pytest.mark.parametrize("name", list(OP_CASES))
def test_ode_forward_op_bad_input(name):
    args, exc, match = OP_CASES[name]
    _expect_error(lambda: torch.ops.contres.ode_forward(*args), [a for a in args if isinstance(a, torch.Tensor)],
                  exc, match)


@pytest.mark.skipif(not CUDA_OK, reason="a device mismatch the op can see needs a CUDA GPU and CUDA kernels")
def test_ode_forward_op_device_mismatch():
    x, w, b = _good()
    _expect_error(lambda: torch.ops.contres.ode_forward(x.cuda(), w, b.cuda(), 0.5, "single", "relu", 0),
                  [x, w, b], RuntimeError, r"weight and bias must be on x's device")


def test_ode_backward_op_bad_input():
    x, w, b = _good()
    out, states, aux = torch.ops.contres.ode_forward(x, w, b, 0.5, "single", "relu", 0)
    gy = random_like(x)
    tensors = [gy, x, w, b, states, aux]
    _expect_error(lambda: torch.ops.contres.ode_backward(gy[:1], x, w, b, states, aux, 0.5, "single", "relu", 0),
                  tensors, ValueError, r"grad_out must have x's shape")
    # states of checkpoint 0 passed with checkpoint 2 (N = 2: no state saved with stride 2)
    _expect_error(lambda: torch.ops.contres.ode_backward(gy, x, w, b, states, aux, 0.5, "single", "relu", 2),
                  tensors, ValueError, r"states must be the forward.s saved states")


# ----------------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("single", "tanh"), ("double_sym", "sigmoid")])
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_empty_batch(device, backend, layer, activation):
    x, w, b = make_inputs(0, 3, 4, 5, 2, 3, device=device)
    for checkpoint in (False, 2):
        y, (gx, gw, gb) = run_block(x, w, b, random_like(x), T=1.0, n_steps=3, layer=layer, activation=activation,
                                    backend=backend, checkpoint=checkpoint)
        assert y.shape == (0, 3, 4, 5) and y.dtype == x.dtype
        assert gx.shape == x.shape
        assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))
    # an empty batch through the module too (parameter .grad after backward)
    block = ODEBlock(3, n_steps=2, backend=backend, device=device, dtype=torch.float64)
    block(x).sum().backward()
    assert torch.equal(block.weight.grad, torch.zeros_like(block.weight))
    assert torch.equal(block.bias.grad, torch.zeros_like(block.bias))


def _layouts(x):
    """Views of the same values with other strides: channels_last, a transpose view, a strided slice."""
    B, C, H, W = x.shape
    xt = x.detach().transpose(2, 3).contiguous().transpose(2, 3)        # H and W strides swapped
    big = torch.zeros(B, 2 * C, H, 2 * W, dtype=x.dtype, device=x.device)
    big[:, ::2, :, 1::2] = x.detach()
    xs = big[:, ::2, :, 1::2]                                            # a strided slice
    xcl = x.detach().contiguous(memory_format=torch.channels_last)
    assert not xt.is_contiguous() and not xs.is_contiguous() and not xcl.is_contiguous()
    return {"channels_last": xcl, "transpose_view": xt, "strided_slice": xs}


@pytest.mark.parametrize("layer,activation,checkpoint", [("single", "relu", False), ("single", "tanh", 2),
                                                         ("double_sym", "leaky_relu", False),
                                                         ("double_sym", "sigmoid", True)])
def test_non_contiguous_inputs(device, layer, activation, checkpoint):
    x, w, b = make_inputs(2, 3, 5, 6, 2, 3, device=device, seed=5)
    kw = dict(T=1.0, n_steps=3, layer=layer, activation=activation, interp="linear")
    gy = random_like(x)
    y_ref, g_ref = run_block(x, w, b, gy, backend="reference", **kw)
    y_c, g_c = run_block(x, w, b, gy, backend="fused", checkpoint=checkpoint, **kw)
    # non-contiguous weight and bias too: a transposed-kernel view and a column of a wider tensor
    w_nc = w.detach().transpose(3, 4).contiguous().transpose(3, 4).requires_grad_()
    b_nc = torch.stack([b.detach(), b.detach()], dim=-1)[..., 0].requires_grad_()
    assert not w_nc.is_contiguous() and not b_nc.is_contiguous()
    for name, xv in _layouts(x).items():
        xv.requires_grad_()
        for gyv in (gy, gy.contiguous(memory_format=torch.channels_last)):
            y, g = run_block(xv, w_nc, b_nc, gyv, backend="fused", checkpoint=checkpoint, **kw)
            assert_close_rel(y, y_c, 1e-13, f"{name} output vs contiguous")
            assert_close_rel(y, y_ref, tol_for(x.dtype), f"{name} output vs reference")
            for what, a, c, r in zip(("grad x", "grad weight", "grad bias"), g, g_c, g_ref):
                assert a.shape == c.shape
                assert_close_rel(a, c, 1e-13, f"{name} {what} vs contiguous")
                assert_close_rel(a, r, tol_for(x.dtype, grad=True), f"{name} {what} vs reference")


def _nan_case(device, layer, activation, checkpoint):
    x, w, b = make_inputs(2, 3, 8, 8, 2, 3, device=device, seed=9)
    with torch.no_grad():
        x[0, 1, 3, 3] = math.nan
    gy = random_like(x)
    kw = dict(T=1.0, n_steps=2, layer=layer, activation=activation)
    ref = run_block(x, w, b, gy, backend="reference", **kw)
    fused = run_block(x, w, b, gy, backend="fused", checkpoint=checkpoint, **kw)
    return (fused[0],) + fused[1], (ref[0],) + ref[1]


@pytest.mark.parametrize("checkpoint", [False, 1])
@pytest.mark.parametrize("layer", ["single", "double_sym"])
@pytest.mark.parametrize("activation", ["identity", "relu", "leaky_relu", "tanh", "sigmoid"])
def test_nan_input_propagates(device, layer, activation, checkpoint):
    """A NaN in x gives NaN in the output exactly where the reference has NaN (its receptive field) and the
    reference's finite values elsewhere; the backward runs and has the reference's NaN pattern."""
    got, ref = _nan_case(device, layer, activation, checkpoint)
    assert torch.isnan(got[0]).any() and not torch.isnan(got[0]).all()
    for what, a, r in zip(("output", "grad x", "grad weight", "grad bias"), got, ref):
        assert torch.equal(torch.isnan(a), torch.isnan(r)), f"{what}: NaN pattern differs from the reference"
    finite = ~torch.isnan(ref[0])
    assert_close_rel(got[0][finite], ref[0][finite], tol_for(torch.float64), "output (finite part)")


@pytest.mark.parametrize("checkpoint", [False, 1])
@pytest.mark.parametrize("layer", ["single", "double_sym"])
@pytest.mark.parametrize("activation", ["identity", "relu", "leaky_relu", "tanh", "sigmoid"])
def test_nan_input_finite_gradients_match_autograd(device, layer, activation, checkpoint):
    """Where the reference's gradients stay finite despite the NaN input, the fused ones equal them: act' at a
    NaN pre-activation must be what PyTorch's autograd uses (relu: threshold_backward passes the gradient
    through for NaN, i.e. relu'(NaN) = 1; leaky_relu'(NaN) = slope)."""
    got, ref = _nan_case(device, layer, activation, checkpoint)
    for what, a, r in zip(("grad x", "grad weight", "grad bias"), got[1:], ref[1:]):
        finite = ~torch.isnan(r)
        if finite.any():
            assert_close_rel(a[finite], r[finite], tol_for(torch.float64, grad=True), f"{what} (finite part)")


@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("double_sym", "tanh")])
def test_tv_norm_edge_inputs_cpu(layer, activation):
    """norm="tv" on the CPU: an empty batch, channels_last and non-contiguous inputs, and a NaN (which spreads
    over its pixel's channels through the normalisation) give the reference's answers and NaN pattern."""
    kw = dict(T=1.0, n_steps=2, layer=layer, activation=activation, norm="tv")
    x0, w, b = make_inputs(0, 3, 4, 5, 2, 3)
    y, (gx, gw, gb) = run_block(x0, w, b, random_like(x0), backend="fused", **kw)
    assert y.shape == x0.shape and torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))

    x, w, b = make_inputs(2, 3, 6, 5, 2, 3, seed=10)
    gy = random_like(x)
    y_ref, g_ref = run_block(x, w, b, gy, backend="reference", **kw)
    for name, xv in _layouts(x).items():
        y, g = run_block(xv.requires_grad_(), w, b, gy, backend="fused", checkpoint=1, **kw)
        assert_close_rel(y, y_ref, tol_for(torch.float64), f"{name} output")
        for a, r in zip(g, g_ref):
            assert_close_rel(a, r, tol_for(torch.float64, grad=True), f"{name} gradient")

    with torch.no_grad():
        x[0, 1, 2, 2] = math.nan
    got = run_block(x, w, b, gy, backend="fused", **kw)
    ref = run_block(x, w, b, gy, backend="reference", **kw)
    for what, a, r in zip(("output", "grad x", "grad weight", "grad bias"), (got[0],) + got[1], (ref[0],) + ref[1]):
        assert torch.equal(torch.isnan(a), torch.isnan(r)), f"tv {what}: NaN pattern differs from the reference"
    finite = ~torch.isnan(ref[0])
    assert finite.any() and not finite.all()
    assert_close_rel(got[0][finite], ref[0][finite], tol_for(torch.float64), "tv output (finite part)")


@pytest.mark.parametrize("backend", ["auto", "fused"])
def test_backend_auto_and_fused_on_cpu(backend):
    """On a build with CPU kernels, 'auto' picks the fused op without the fallback warning, and both match
    the reference; the fused op really is used (its autograd node, not the reference's conv nodes)."""
    assert contres.build_info()["cpu_kernels"] is True
    x, w, b = make_inputs(2, 3, 4, 5, 3, 3, seed=8)
    kw = dict(T=1.0, n_steps=4, layer="double_sym", activation="tanh", interp="linear")
    gy = random_like(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, g = run_block(x, w, b, gy, backend=backend, **kw)
    y_ref, g_ref = run_block(x, w, b, gy, backend="reference", **kw)
    assert F.resolve_backend(backend, x.device) == "fused"
    assert "ode_forward" in type(y.grad_fn).__name__.lower() or "contres" in str(y.grad_fn).lower(), y.grad_fn
    assert_close_rel(y, y_ref, tol_for(x.dtype))
    for a, r in zip(g, g_ref):
        assert_close_rel(a, r, tol_for(x.dtype, grad=True))


def test_backward_twice_and_no_grad_inputs():
    """retain_graph backward twice gives the same gradients; inputs without requires_grad get none."""
    x, w, b = make_inputs(2, 3, 4, 4, 2, 3, seed=10)
    x.requires_grad_(False)
    y = F.ode_block(x, w, b, n_steps=3, backend="fused", layer="single", activation="relu")
    gy = random_like(y)
    g1 = torch.autograd.grad(y, (w, b), gy, retain_graph=True)
    g2 = torch.autograd.grad(y, (w, b), gy)
    for a, c in zip(g1, g2):
        assert torch.equal(a, c)
    _, g_ref = run_block(x, w, b, gy, n_steps=3, backend="reference", layer="single", activation="relu")
    for a, r in zip(g1, g_ref[1:]):
        assert_close_rel(a, r, tol_for(x.dtype, grad=True))
    with torch.no_grad():
        y2 = F.ode_block(x, w, b, n_steps=3, backend="fused", layer="single", activation="relu")
    assert y2.grad_fn is None and torch.equal(y2, y.detach())


@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("single", "sigmoid"), ("double_sym", "relu")])
def test_multithreaded_kernels(layer, activation):
    """The suite runs single-threaded (conftest); here the fused CPU kernels run with 2 threads on a problem big
    enough to be split across threads (2*8*48*48 elements: three segments of the flat channels_last data), and
    must match the reference, and the single-threaded result within rounding (oneDNN may block differently)."""
    x, w, b = make_inputs(2, 8, 48, 48, 2, 3, dtype=torch.float32, seed=13)
    kw = dict(T=1.0, n_steps=2, layer=layer, activation=activation, backend="fused")
    gy = random_like(x)
    y1, g1 = run_block(x, w, b, gy, **kw)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y2, g2 = run_block(x, w, b, gy, **kw)
        y_ref, g_ref = run_block(x, w, b, gy, **dict(kw, backend="reference"))
    finally:
        torch.set_num_threads(old)
    assert_close_rel(y2, y_ref, tol_for(x.dtype))
    for a, r in zip(g2, g_ref):
        assert_close_rel(a, r, tol_for(x.dtype, grad=True))
    # the elementwise kernels and the bias reduction are deterministic per element/channel whatever the threads
    assert rel_err(y2, y1) <= 1e-6 and rel_err(g2[2], g1[2]) <= 1e-5
