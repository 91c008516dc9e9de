"""Edge cases give the reference's answer: an empty batch, channels_last and non-contiguous views, NaN inputs,
backend selection, a second backward, and the CPU kernels' threads."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import contres
from contres import ODEBlock
from conftest import assert_close_rel, make_inputs, random_like, rel_err, run_block, tol_for

F = contres.functional


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


def test_paths_are_reported_and_chosen():
    """contres.ops.last_paths names what ran; set_cuda_paths validates its choices (and they do not touch the
    CPU path)."""
    x, w, b = make_inputs(2, 3, 4, 5, 2, 3)
    y = F.ode_block(x, w, b, n_steps=2, backend="fused")
    assert contres.ops.last_paths()["forward"] == "cpu:aten"
    y.sum().backward()
    assert contres.ops.last_paths() == {"forward": "cpu:aten", "backward": "cpu:aten"}
    old = contres.cuda_paths()
    try:
        contres.set_cuda_paths(conv="aten", graphs="on")
        assert contres.cuda_paths() == {"conv": "aten", "graphs": "on"}
        with pytest.raises(ValueError, match="convolution path must be one of auto, aten, fused"):
            contres.set_cuda_paths(conv="cudnn")
        with pytest.raises(ValueError, match="CUDA graphs must be one of auto, on, off"):
            contres.set_cuda_paths(graphs="yes")
        assert contres.cuda_paths() == {"conv": "aten", "graphs": "on"}, "a refused choice changes nothing"
        F.ode_block(x, w, b, n_steps=2, backend="fused")
        assert contres.ops.last_paths()["forward"] == "cpu:aten"
    finally:
        contres.set_cuda_paths(**old)
