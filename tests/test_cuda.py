"""CUDA-only checks: agreement with the fused CPU op, autocast, streams, and the issue's GPU shapes.

The device-parametrised tests elsewhere cover fused-vs-reference, gradcheck, opcheck and torch.compile on CUDA;
everything here needs a GPU and is skipped (with the reason shown) without one.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import contres
from conftest import CUDA_OK, CUDA_SKIP_REASON, assert_close_rel, make_inputs, random_like, run_block, tol_for

pytestmark = pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)


@pytest.fixture(autouse=True)
def _exact_float32():
    """cuDNN uses TF32 for float32 convolutions by default; compare the maths in full float32."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


def assert_cuda_matches_cpu(C, grad_tol, **config):
    """The fused block on CUDA against the fused CPU op, float64, 5 steps of linear controls: output to 1e-12,
    the gradients wrt x, weight and bias to grad_tol."""
    kw = dict(T=0.9, n_steps=5, interp="linear", backend="fused", **config)
    x, w, b = make_inputs(B=3, C=C, H=7, W=9, M=3, dtype=torch.float64)
    g = random_like(x)
    y_cpu, grads_cpu = run_block(x, w, b, g, **kw)
    xc, wc, bc = (t.detach().cuda().requires_grad_() for t in (x, w, b))
    y_gpu, grads_gpu = run_block(xc, wc, bc, g.cuda(), **kw)
    assert_close_rel(y_gpu, y_cpu, 1e-12, "output")
    for name, a, r in zip(("x", "weight", "bias"), grads_gpu, grads_cpu):
        assert_close_rel(a, r, grad_tol, f"grad {name}")


@pytest.mark.parametrize("layer,activation", list(itertools.product(
    ("single", "double_sym"), ("identity", "relu", "leaky_relu", "tanh", "sigmoid"))))
@pytest.mark.parametrize("checkpoint", [False, 2])
@pytest.mark.parametrize("C", [4, 8], ids=["C4-bias-by-aten", "C8-bias-in-pass"])
def test_cuda_matches_fused_cpu(layer, activation, checkpoint, C):
    """CUDA works in channels_last; with C % 8 == 0 its adjoint pass also reduces the bias gradient."""
    assert_cuda_matches_cpu(C, 1e-11, layer=layer, activation=activation, checkpoint=checkpoint)


@pytest.mark.parametrize("method,memory", [("rk4", "states"), ("leapfrog", "states"), ("leapfrog", "reversible")])
@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("double_sym", "tanh"), ("single", "sigmoid")])
@pytest.mark.parametrize("checkpoint", [False, 2])
def test_cuda_methods_match_fused_cpu(method, memory, layer, activation, checkpoint):
    if memory == "reversible" and checkpoint:
        pytest.skip("reversible takes no checkpoint")
    assert_cuda_matches_cpu(8, 1e-10, layer=layer, activation=activation, checkpoint=checkpoint, method=method,
                            memory=memory)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 100 * 2**30,
                    reason="needs a GPU with 100 GiB")
def test_past_two_to_the_31_elements():
    """64-bit indexing: a state of 2^31 + 2^27 elements (bf16, one step): the last sample of the batch, whose
    elements sit past 2^31, gets the output and input gradient of the same block run on that sample alone."""
    torch.manual_seed(0)
    B, C, H, W = 17, 64, 1024, 2048  # 2.28e9 elements
    x = torch.randn(B, C, H, W, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(1, C, C, 3, 3, device="cuda") / 24).to(torch.bfloat16).requires_grad_()
    b = torch.zeros(1, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kw = dict(T=1.0, n_steps=1, layer="single", activation="relu", backend="fused")
    y = contres.functional.ode_block(x, w, b, **kw)
    g = torch.ones_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    last = x[-1:].detach().clone().requires_grad_()
    y1 = contres.functional.ode_block(last, w, b, **kw)
    gx1 = torch.autograd.grad(y1, last, torch.ones_like(y1))[0]
    # cuDNN may pick other algorithms for one sample than for 17: bf16 rounding, not indexing, is the difference
    assert_close_rel(y[-1:], y1, 2e-2, "output of the last sample")
    assert_close_rel(gx[-1:], gx1, 5e-2, "grad x of the last sample")
    assert torch.isfinite(gw).all()


@pytest.mark.parametrize("shape", [(2, 16, 28, 28), (4, 8, 32, 32), (3, 5, 7, 13), (2, 24, 9, 9), (1, 64, 5, 3)],
                         ids=str)
@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("double_sym", "tanh"), ("single", "sigmoid")])
def test_cuda_float32_vs_reference(shape, layer, activation):
    B, C, H, W = shape
    x, w, b = make_inputs(B=B, C=C, H=H, W=W, M=4, dtype=torch.float32, device="cuda")
    g = random_like(x)
    kw = dict(T=1.0, n_steps=8, layer=layer, activation=activation)
    y, grads = run_block(x, w, b, g, backend="fused", **kw)
    y_ref, grads_ref = run_block(x, w, b, g, backend="reference", **kw)
    assert_close_rel(y, y_ref, tol_for(torch.float32), "output")
    for name, a, r in zip(("x", "weight", "bias"), grads, grads_ref):
        assert_close_rel(a, r, tol_for(torch.float32, grad=True), f"grad {name}")


@pytest.mark.parametrize("amp_dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)], ids=["bf16", "fp16"])
@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("double_sym", "tanh")])
def test_autocast_runs_fused_in_half_precision(amp_dtype, tol, layer, activation):
    x, w, b = make_inputs(B=4, C=8, H=16, W=16, M=4, dtype=torch.float32, device="cuda")
    g = random_like(x)
    kw = dict(T=1.0, n_steps=4, layer=layer, activation=activation)
    y_ref, grads_ref = run_block(x, w, b, g, backend="reference", **kw)
    with torch.autocast("cuda", dtype=amp_dtype):
        y = contres.functional.ode_block(x, w, b, backend="fused", **kw)
    assert y.dtype == amp_dtype
    grads = torch.autograd.grad(y, (x, w, b), g.to(amp_dtype))
    assert [t.dtype for t in grads] == [torch.float32] * 3, "gradients come back in the parameters' dtype"
    assert_close_rel(y, y_ref, tol, "output")
    for name, a, r in zip(("x", "weight", "bias"), grads, grads_ref):
        assert_close_rel(a, r, 5 * tol, f"grad {name}")


def test_non_default_stream():
    x, w, b = make_inputs(B=4, C=8, H=16, W=16, M=2, dtype=torch.float32, device="cuda")
    g = random_like(x)
    kw = dict(T=1.0, n_steps=6, layer="single", activation="relu", backend="fused")
    y0, grads0 = run_block(x, w, b, g, **kw)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y1, grads1 = run_block(x, w, b, g, **kw)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(y0, y1)
    for a, r in zip(grads0, grads1):
        assert torch.equal(a, r)


@pytest.mark.parametrize("C", [12, 16])
def test_bias_gradient_is_deterministic(C):
    x, w, b = make_inputs(B=8, C=C, H=32, W=32, M=2, dtype=torch.float32, device="cuda")
    g = random_like(x)
    kw = dict(T=1.0, n_steps=4, layer="single", activation="relu", backend="fused")
    first = run_block(x, w, b, g, **kw)[1][2]
    for _ in range(3):
        assert torch.equal(run_block(x, w, b, g, **kw)[1][2], first)


def test_odeblock_cuda_module_and_compile():
    torch._dynamo.reset()
    block = contres.ODEBlock(8, n_steps=4, n_controls=2, interp="linear", backend="fused").cuda()
    x = torch.randn(2, 8, 12, 12, device="cuda", requires_grad=True)
    compiled = torch.compile(block, fullgraph=True)
    y_eager = block(x)
    y_comp = compiled(x)
    assert_close_rel(y_comp, y_eager, 1e-5, "compiled output")
    g_eager = torch.autograd.grad(y_eager.square().sum(), (x, block.weight))
    g_comp = torch.autograd.grad(y_comp.square().sum(), (x, block.weight))
    for a, r in zip(g_comp, g_eager):
        assert_close_rel(a, r, 1e-5, "compiled gradient")


@pytest.mark.parametrize("layer,activation,checkpoint", [("single", "relu", False), ("single", "tanh", 2),
                                                         ("double_sym", "tanh", False)])
def test_cuda_graph_capture_and_replay(layer, activation, checkpoint):
    """The ops are capture-safe (no host syncs; every buffer from the caching allocator): an ODEBlock captured
    forward and backward by torch.cuda.make_graphed_callables gives, replayed on new inputs, the output and
    gradients of the uncaptured block."""
    torch.manual_seed(0)
    block = contres.ODEBlock(16, n_steps=4, n_controls=2, layer=layer, activation=activation, backend="fused",
                             checkpoint=checkpoint).cuda()
    sample = torch.randn(2, 16, 12, 12, device="cuda", requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(block, (sample,))
    for seed in (1, 2):  # two replays with new data: the graphs read their static inputs afresh
        x = random_like(sample, seed).requires_grad_()
        g = random_like(sample, seed + 10)
        y = graphed(x)
        grads = torch.autograd.grad(y, (x, block.weight, block.bias), g)
        y_ref = block(x)
        grads_ref = torch.autograd.grad(y_ref, (x, block.weight, block.bias), g)
        assert_close_rel(y, y_ref, 1e-6, "graphed output")
        for name, a, r in zip(("x", "weight", "bias"), grads, grads_ref):
            assert_close_rel(a, r, 1e-6, f"graphed grad {name}")


@pytest.mark.parametrize("C", [3, 8, 16, 64], ids=lambda c: f"C{c}")  # one lane, 8 and 32 lanes per pixel
@pytest.mark.parametrize("layer,activation,method", [("single", "relu", "euler"), ("double_sym", "tanh", "rk4"),
                                                     ("single", "sigmoid", "leapfrog")])
def test_tv_norm_fused_on_cuda(C, layer, activation, method):
    """norm="tv" runs its CUDA passes (backend="auto" picks them without a warning) and matches the reference."""
    x, w, b = make_inputs(B=2, C=C, H=6, W=5, M=2, dtype=torch.float64, device="cuda")
    g = random_like(x)
    kw = dict(T=1.0, n_steps=3, layer=layer, activation=activation, norm="tv", method=method)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, grads = run_block(x, w, b, g, backend="auto", **kw)
    y_ref, grads_ref = run_block(x, w, b, g, backend="reference", **kw)
    assert_close_rel(y, y_ref, 1e-12, "output")
    for name, a, r in zip(("x", "weight", "bias"), grads, grads_ref):
        assert_close_rel(a, r, 1e-10, f"grad {name}")


@pytest.fixture
def fused_conv():
    if not contres.build_info().get("cudnn_fusion"):
        pytest.skip("contres built without the fused cuDNN graphs")
    old = contres.cuda_paths()
    contres.set_cuda_paths(conv="fused", graphs=old["graphs"])
    yield
    contres.set_cuda_paths(**old)


@pytest.mark.parametrize("precision", ["tf32", "fp32", "bf16"])
@pytest.mark.parametrize("layer,activation", [("single", "relu"), ("single", "tanh"), ("single", "identity"),
                                              ("double_sym", "tanh"), ("double_sym", "relu")])
def test_fused_cudnn_path_matches_reference(fused_conv, precision, layer, activation):
    """conv="fused": Euler's steps as fused cuDNN graphs (with ATen where a graph cannot run) give the reference's
    output and gradients, and the forward graphs really ran."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    x, w, b = make_inputs(B=4, C=16, H=12, W=12, M=4, dtype=torch.float32, device="cuda", seed=3)
    g = random_like(x)
    kw = dict(T=1.0, n_steps=4, layer=layer, activation=activation)
    y_ref, grads_ref = run_block(x, w, b, g, backend="reference", **kw)
    xd, wd, bd = (t.detach().to(dtype).requires_grad_() for t in (x, w, b))
    contres.empty_cudnn_plan_cache()
    y, grads = run_block(xd, wd, bd, g.to(dtype), backend="fused", **kw)
    assert contres.ops.last_paths() == {"forward": "cuda:fused", "backward": "cuda:fused"}
    tol = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 3e-2}[precision]
    assert_close_rel(y, y_ref, tol, "output")
    for name, a, r in zip(("x", "weight", "bias"), grads, grads_ref):
        assert_close_rel(a, r, 5 * tol, f"grad {name}")
    ran = [r for r in contres._C._cudnn_fusion_built_graphs() if r["runs"] > 0]
    print(f"{precision} {layer}/{activation}: graphs that ran:", [(r["key"][:40], r["runs"]) for r in ran])
    if precision != "fp32":
        assert ran, "no fused graph ran"
