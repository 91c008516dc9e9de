"""Bad arguments to the functional API, ODEBlock and the raw forward op give clear errors (type + a message naming
the argument) and leave the inputs untouched. Foreign tensors handed to the backward op: test_op_validation.py;
the new integrators' options: test_methods.py."""
from __future__ import annotations

import math

import pytest
import torch

import contres
from contres import ODEBlock
from conftest import CUDA_OK, assert_bitwise_equal, make_inputs

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
    "activation": (dict(activation="gelu"), ValueError, r"activation must be one of"),
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
