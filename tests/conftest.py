"""Shared device/dtype matrix and helpers for the contres test suite.

Every comparison in this suite is against contres.reference (pure PyTorch autograd of docs/math.md) or against
an independent PyTorch computation, never against stored outputs of the fused op.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

import contres

# The suite is thousands of tiny ops: with several OpenMP threads on a 2-core machine (shared with other jobs),
# every convolution pays a thread-barrier wait (measured: 16 ms instead of 20 us). One thread by default;
# CONTRES_TEST_THREADS overrides, and test_errors.py::test_multithreaded_kernels runs the parallel paths.
torch.set_num_threads(int(os.environ.get("CONTRES_TEST_THREADS", "1")))

# TF32 convolutions (on by default for cuDNN on Ampere+) round float32 to 10 mantissa bits; the fused op and
# the reference may pick different conv algorithms, so the float32 tolerance below assumes true float32.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

BUILD_INFO = contres.build_info()
HAS_CUDA_GPU = torch.cuda.is_available()
HAS_CUDA_KERNELS = bool(BUILD_INFO.get("cuda_kernels"))
CUDA_OK = HAS_CUDA_GPU and HAS_CUDA_KERNELS
CUDA_SKIP_REASON = "no CUDA GPU" if not HAS_CUDA_GPU else "contres built without CUDA kernels"

# The devices the fused op can run on here.
DEVICES = ["cpu"] + (["cuda"] if CUDA_OK else [])

# The same list as pytest params: the cuda entry is always present and skipped with a visible reason.
DEVICE_PARAMS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)),
]

LAYERS = ("single", "double_sym")
ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid")
INTERPS = ("constant", "linear")

# max|a - ref| / max|ref| allowed, per dtype of the computation.
TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    # bf16 (8 bits of mantissa, float accumulation inside the op) against a float32 reference on the same
    # (bf16-rounded) inputs: every step rounds u, z and act(z) to ~2^-9; measured <= 6e-3 on the output.
    torch.bfloat16: 2e-2,
}
# Gradients: the bf16 reference itself is off by up to 5e-2 (relu kinks that flip under bf16 rounding, weight
# grads reduced over B*H*W); 1e-1 still catches every real error in the math (those are O(1)).
TOL_GRAD = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 1e-1}


def tol_for(dtype: torch.dtype, grad: bool = False) -> float:
    return (TOL_GRAD if grad else TOL)[dtype]


@pytest.fixture(params=DEVICE_PARAMS)
def device(request) -> str:
    return request.param


@pytest.fixture(params=[pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")])
def dtype(request) -> torch.dtype:
    return request.param


def make_inputs(B=2, C=3, H=5, W=6, M=2, k=3, dtype=torch.float64, device="cpu", seed=0, scale=0.3,
                requires_grad=True):
    """x (B, C, H, W), weight (M, C, C, k, k), bias (M, C); deterministic in `seed`.

    The kernel entries have std `scale` * 3 / sqrt(C k^2) (i.e. `scale` for a 3x3 kernel with one channel; the
    fan-in normalisation keeps the convolution's gain ~`scale` for every C and k so the ODE stays stable);
    the bias has std `scale`, and x is standard normal (so relu/leaky_relu kinks are hit at many points).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    w = torch.randn(M, C, C, k, k, generator=g, dtype=torch.float64) * (scale * 3.0 / math.sqrt(C * k * k))
    b = torch.randn(M, C, generator=g, dtype=torch.float64) * scale
    out = []
    for t in (x, w, b):
        t = t.to(device=device, dtype=dtype)
        if requires_grad:
            t.requires_grad_(True)
        out.append(t)
    return tuple(out)


def random_like(t: torch.Tensor, seed: int = 1234) -> torch.Tensor:
    """A deterministic random tensor like t (an upstream gradient that is not all ones)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g, dtype=torch.float64).to(device=t.device, dtype=t.dtype)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max|a - ref| / max|ref| computed in float64 (absolute when ref is all zeros); nan if a has a NaN."""
    assert a.shape == ref.shape, f"shape {tuple(a.shape)} != reference shape {tuple(ref.shape)}"
    a64 = a.detach().to("cpu", torch.float64)
    r64 = ref.detach().to("cpu", torch.float64)
    if a64.numel() == 0:
        return 0.0
    if torch.isnan(a64).any() and not torch.isnan(r64).any():
        return math.nan
    scale = r64.abs().max().item()
    err = (a64 - r64).abs().max().item()
    return err / scale if scale > 0 else err


def assert_close_rel(a: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "", floor: float = 0.0) -> None:
    """max|a - ref| / max|ref| <= tol (NaN in a where the reference is finite fails). With a floor, the error is
    relative to max(max|ref|, floor): for a gradient that is zero in exact arithmetic (a conv bias before an
    instance norm), compared on the scale of the others."""
    err = rel_err(a, ref)
    scale = ref.detach().abs().max().item() if ref.numel() else 0.0
    if 0 < scale < floor:
        err = err * scale / floor
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} (max|ref| = " \
                       f"{ref.detach().abs().max().item() if ref.numel() else 0:.3e})"


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    """Same shape, dtype, and the same bits (NaN-safe, distinguishes -0.0 from 0.0)."""
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: metadata changed"
    if a.device.type == "meta":
        return
    a, b = a.detach().contiguous(), b.detach().contiguous()
    if a.is_floating_point():
        int_dtype = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[a.element_size()]
        a, b = a.view(int_dtype), b.view(int_dtype)
    assert torch.equal(a, b), f"{what}: tensor data changed"


def run_block(x, weight, bias, grad_out=None, **kwargs):
    """Forward through contres.functional.ode_block and, when grad_out is given, the gradients wrt the inputs
    that require grad (None for the others). Returns (y, grads)."""
    y = contres.functional.ode_block(x, weight, bias, **kwargs)
    if grad_out is None:
        return y, None
    inputs = [t for t in (x, weight, bias) if t.requires_grad]
    gs = iter(torch.autograd.grad(y, inputs, grad_out))
    return y, tuple(next(gs) if t.requires_grad else None for t in (x, weight, bias))


def compare_with_reference(device, dtype, *, B, C, H, W, N, M, k, layer, activation, interp, checkpoint=False,
                           T=1.0, seed=0, scale=0.3, norm="none", method="euler", memory="states"):
    """The fused block against the reference on one configuration: the output and the gradients wrt x, weight and
    bias under a random upstream gradient, with the dtype's tolerance; the block must move the state (so that a
    block doing nothing cannot pass a loose comparison of x with itself)."""
    x, w, b = make_inputs(B, C, H, W, M, k, dtype=dtype, device=device, seed=seed, scale=scale)
    kw = dict(T=T, n_steps=N, layer=layer, activation=activation, interp=interp, norm=norm, method=method)
    gy = random_like(x, seed=seed + 1)
    y_ref, g_ref = run_block(x, w, b, gy, backend="reference", **kw)
    y, g = run_block(x, w, b, gy, backend="fused", checkpoint=checkpoint, memory=memory, **kw)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert (y_ref - x).abs().max() > 1e-3 * x.abs().max(), "the block must move the state"
    assert_close_rel(y, y_ref, tol_for(dtype), "output")
    for name, gf, gr in zip(("grad x", "grad weight", "grad bias"), g, g_ref):
        assert gf.shape == gr.shape and gf.dtype == gr.dtype
        assert_close_rel(gf, gr, tol_for(dtype, grad=True), name)
