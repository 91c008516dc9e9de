"""What the fused forward keeps (docs/math.md section 5): nothing when no gradient can flow (no_grad,
inference_mode, no input requiring grad) -- no saved states or aux, nothing taken from the CPU pool, and a peak of
memory that does not grow with n_steps -- and, with memory="reversible", a constant amount whatever n_steps, the
controls interpolated inside the op (gradients as before)."""
from __future__ import annotations

import contextlib
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import contres
from contres import functional, ops, reference
from contres.bench import memory, rss
from conftest import DEVICE_PARAMS, CUDA_OK, CUDA_SKIP_REASON, assert_close_rel, make_inputs, random_like

METHODS = ("euler", "rk4", "leapfrog")
NO_GRAD_CONTEXTS = {
    "no_grad": lambda x, w, b: (torch.no_grad(), (x, w, b)),
    "inference_mode": lambda x, w, b: (torch.inference_mode(), (x, w, b)),
    "no_input_requires_grad": lambda x, w, b: (contextlib.nullcontext(), tuple(t.detach() for t in (x, w, b))),
}


class OpCalls(TorchDispatchMode):
    """Records every contres::ode_forward call: its memory argument and what it returned."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.contres.ode_forward.default:
            schema = [a.name for a in func._schema.arguments]
            bound = dict(zip(schema, args), **(kwargs or {}))
            self.calls.append((bound.get("memory", "states"), out))
        return out


def _forward(x, w, b, **kw):
    return functional.ode_block(x, w, b, backend="fused", **kw)


# ---------------------------------------------------------------------------------------------- inference

@pytest.mark.parametrize("context", list(NO_GRAD_CONTEXTS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer,activation,norm", [("single", "relu", "none"), ("double_sym", "tanh", "none"),
                                                   ("single", "sigmoid", "tv")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_inference_keeps_nothing(device, dtype, layer, activation, norm, method, context):
    """The op runs with memory='none', returns empty states and aux, and gives the training forward's output."""
    x, w, b = make_inputs(2, 3, 5, 6, 3, 3, dtype=dtype, device=device, seed=1)
    kw = dict(T=1.0, n_steps=5, layer=layer, activation=activation, interp="linear", norm=norm, method=method,
              checkpoint=2)  # checkpoint (and memory) are ignored when no gradient can flow
    want = _forward(x, w, b, **kw)
    ctx, args = NO_GRAD_CONTEXTS[context](x, w, b)
    with ctx, OpCalls() as calls:
        got = _forward(*args, **kw)
    [(mode, (out, states, aux))] = calls.calls
    assert mode == "none"
    assert states.numel() == 0 and aux == []
    assert not got.requires_grad
    if device == "cpu":  # the same arithmetic in other buffers
        assert torch.equal(got, want.detach())
    else:
        assert_close_rel(got, want, {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2), "output")


def test_inference_with_reversible_and_continuous_gradient_keeps_nothing():
    x, w, b = make_inputs(2, 3, 5, 6, 2, 3, seed=2)
    with torch.no_grad(), OpCalls() as calls:
        _forward(x, w, b, T=1.0, n_steps=4, method="leapfrog", memory="reversible")
        _forward(x, w, b, T=1.0, n_steps=4, gradient="continuous")  # its forward is the block's
    assert [mode for mode, _ in calls.calls] == ["none", "none"]
    with torch.no_grad(), pytest.raises(ValueError, match="gradient='continuous' .* method='euler' only"):
        _forward(x, w, b, T=1.0, n_steps=4, gradient="continuous", method="rk4")


def test_training_forward_still_keeps_its_states():
    x, w, b = make_inputs(2, 3, 5, 6, 2, 3, seed=3)
    with OpCalls() as calls:
        _forward(x, w, b, T=1.0, n_steps=4, activation="relu")
        _forward(x.detach(), w, b, T=1.0, n_steps=4, activation="relu")  # one input requiring grad is enough
    assert [mode for mode, _ in calls.calls] == ["states", "states"]
    assert all(states.shape[0] == 3 and aux[0].shape[0] == 4 for _, (_, states, aux) in calls.calls)


def test_inference_takes_nothing_from_the_cpu_pool():
    """States of 2 MiB would be pooled by a training forward; an inference forward leaves the pool untouched."""
    x, w, b = make_inputs(8, 16, 32, 32, 4, 3, dtype=torch.float32, seed=4)
    kw = dict(T=1.0, n_steps=4, method="rk4", layer="single", activation="relu")
    contres.reset_cpu_pool_counters()
    before = contres.cpu_pool_stats()
    with torch.inference_mode():
        _forward(x, w, b, **kw)
    after = contres.cpu_pool_stats()
    assert (after["hits"], after["misses"], after["cached_bytes"]) == (0, 0, before["cached_bytes"])
    _forward(x, w, b, **kw)  # the training forward does use it
    assert contres.cpu_pool_stats()["hits"] + contres.cpu_pool_stats()["misses"] > 0


def test_op_refuses_a_backward_of_memory_none():
    x, w, b = make_inputs(2, 3, 5, 6, 3, 3, requires_grad=False)
    _, states, aux = torch.ops.contres.ode_forward(x, w, b, 0.25, "single", "relu", 0, "none", "euler", "none")
    assert states.numel() == 0 and aux == []
    with pytest.raises(ValueError, match="memory='none' keeps nothing for a backward"):
        torch.ops.contres.ode_backward(torch.ones_like(x), x, w, b, states, aux, 0.25, "single", "relu", 0, "none",
                                       "euler", "none")
    with pytest.raises(ValueError, match="memory='none' keeps no states, so it takes no checkpoint"):
        torch.ops.contres.ode_forward(x, w, b, 0.25, "single", "relu", 2, "none", "euler", "none")


def test_reference_under_inference_mode_then_autograd():
    """The reference caches its interpolation weights per configuration; one first made under inference_mode must
    still serve a later call under autograd."""
    x, w, b = make_inputs(2, 3, 4, 4, 3, 3, seed=9)
    kw = dict(T=0.7, n_steps=5, interp="linear", method="rk4")
    with torch.inference_mode():
        reference.ode_block(x, w, b, **kw)
    reference.ode_block(x, w, b, **kw).sum().backward()
    assert w.grad is not None


INFERENCE_SHAPE = dict(batch=4, channels=16, size=64)  # |u| = 1 MiB in float32


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_inference_peak_memory_is_flat_in_n_steps():
    """Peak RSS of one warm inference forward above the RSS before it (in a child process whose glibc returns every
    large block on free, so that RSS follows live memory): the fused block's does not grow from 4 to 24 steps and
    stays within 4 |u| of the reference's."""
    cases = [dict(method=m, backend=be, n_steps=n, **INFERENCE_SHAPE) for m in METHODS for n in (4, 24)
             for be in ("reference", "fused")]
    out = rss.run_case("inference_cases", dict(cases=cases, threads=1), env={"MALLOC_MMAP_THRESHOLD_": "65536"})
    if not out["peak_reset"]:
        pytest.skip("the kernel does not reset the peak RSS (/proc/self/clear_refs)")
    peak = {(r["method"], r["backend"], r["n_steps"]): r["peak_u"] for r in out["rows"]}
    for m in METHODS:
        table = {k: round(v, 2) for k, v in peak.items() if k[0] == m}
        assert peak[m, "fused", 24] <= peak[m, "fused", 4] + 1.0, f"{m}: the fused peak grows with N: {table}"
        for n in (4, 24):
            assert peak[m, "fused", n] <= peak[m, "reference", n] + 4.0, f"{m}: more than 4 |u| above: {table}"


@pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)
@pytest.mark.parametrize("method", METHODS)
def test_cuda_inference_peak_memory_is_flat_in_n_steps(method):
    """The caching allocator's peak of one inference forward above the memory allocated before it."""
    def peak(backend, n_steps):
        x, w, b = make_inputs(4, 16, 64, 64, n_steps, 3, dtype=torch.float32, device="cuda", seed=5,
                              requires_grad=False)
        kw = dict(T=1.0, n_steps=n_steps, method=method, layer="double_sym", activation="tanh", backend=backend)
        with torch.inference_mode():
            functional.ode_block(x, w, b, **kw)  # warm-up (cuDNN's plans and workspaces)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            y = functional.ode_block(x, w, b, **kw)
            torch.cuda.synchronize()
        u = x.numel() * x.element_size()
        del y
        return (torch.cuda.max_memory_allocated() - base) / u

    fused = {n: peak("fused", n) for n in (2, 24)}
    ref = {n: peak("reference", n) for n in (2, 24)}
    assert fused[24] <= fused[2] + 1.0, (fused, ref)
    for n in (2, 24):
        assert fused[n] <= ref[n] + 4.0, (fused, ref)


@pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)
@pytest.mark.parametrize("conv,graphs", [("aten", "on"), ("fused", "off"), ("fused", "on")])
def test_cuda_inference_on_every_path(conv, graphs):
    """The inference forward on contres' other CUDA paths (a CUDA graph of the whole call, the fused cuDNN graphs):
    empty states and aux, and the plain path's output."""
    old = contres.cuda_paths()
    torch.manual_seed(0)
    block = contres.ODEBlock(16, n_steps=4, n_controls=2, interp="linear", backend="fused").cuda()
    try:
        for it in range(3):  # 1: warm-up; 2: captured; 3: replayed
            x = torch.randn(4, 16, 12, 12, device="cuda")
            contres.set_cuda_paths(conv=conv, graphs=graphs)
            with torch.inference_mode(), OpCalls() as calls:
                got = block(x)
            contres.set_cuda_paths(conv="aten", graphs="off")
            with torch.inference_mode():
                want = block(x)
            [(mode, (_, states, aux))] = calls.calls
            assert mode == "none" and states.numel() == 0 and aux == []
            assert_close_rel(got, want, 1e-3 if conv == "fused" else 1e-6, f"iteration {it}")  # fused: TF32
    finally:
        contres.set_cuda_paths(**old)


@pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)
def test_cuda_caches_keep_memory_bounded_over_many_shapes():
    """Training over 21 shapes of one size (H x W = 576) on the CUDA graphs of the fused cuDNN graphs, with the
    graph cache held to 4 keys and the plan cache to 16 plans: both stay within their limits, and the memory the
    process holds after the last shape is no more than after the first four (the evicted graphs' pools and
    plans are given back)."""
    old_paths = contres.cuda_paths()
    graph_limits = contres.cuda_graph_cache_stats()
    plan_limit = contres.cudnn_plan_cache_stats()["max_plans"]
    torch.manual_seed(7)
    block = contres.ODEBlock(8, n_steps=2, backend="fused").cuda()
    shapes = [(h, 576 // h) for h in range(1, 577) if 576 % h == 0]
    try:
        contres.empty_cuda_graph_cache()
        contres.empty_cudnn_plan_cache()
        contres.set_cuda_graph_cache_limit(max_keys=4, max_instances=4)
        contres.set_cudnn_plan_cache_limit(16)
        contres.set_cuda_paths(conv="fused", graphs="on")
        held = []
        for i, (h, w) in enumerate(shapes):
            x = torch.randn(2, 8, h, w, device="cuda")
            for _ in range(3):  # warm-up, capture, replay
                xi = x.clone().requires_grad_()
                block(xi).square().sum().backward()
            torch.cuda.synchronize()
            g, p = contres.cuda_graph_cache_stats(), contres.cudnn_plan_cache_stats()
            assert g["keys"] <= 4 and g["instances"] <= 4 and p["plans"] <= 16, (i, g, p)
            held.append(torch.cuda.memory_allocated())
        assert max(held[4:]) <= max(held[:4]) + (1 << 20), held
    finally:
        contres.set_cuda_paths(**old_paths)
        contres.set_cuda_graph_cache_limit(graph_limits["max_keys"], graph_limits["max_instances"])
        contres.set_cudnn_plan_cache_limit(plan_limit)
        contres.empty_cuda_graph_cache()


# ---------------------------------------------------------------------------------------------- reversible

def _reversible_saved_u(N, M, interp, shape=(4, 8, 12, 12)):
    B, C, H, W = shape
    x, w, b = make_inputs(B, C, H, W, M, 3, dtype=torch.float32, seed=6)
    kw = dict(T=1.0, n_steps=N, layer="double_sym", activation="tanh", interp=interp, method="leapfrog",
              memory="reversible")
    nbytes, _ = memory.saved_bytes(lambda: _forward(x, w, b, **kw), (x, w, b))
    return nbytes / (x.numel() * x.element_size())


@pytest.mark.parametrize("interp,controls", [("constant", None), ("linear", 4), ("constant", 3)])
def test_reversible_keeps_the_same_whatever_n_steps(interp, controls):
    """Two states and the output (3 |u|) at B4 C8 12x12 from N = 16 to 256: no per-step kernels are kept."""
    saved = {N: _reversible_saved_u(N, controls or N, interp) for N in (16, 64, 256)}
    assert saved[16] <= 3.5, saved
    assert saved[16] == saved[64] == saved[256], saved


def test_reversible_keeps_the_same_at_other_shapes():
    for shape in ((1, 4, 6, 6), (2, 16, 20, 20)):
        saved = {N: _reversible_saved_u(N, 5, "linear", shape) for N in (16, 256)}
        assert saved[16] == saved[256] <= 3.5, (shape, saved)


def _before_in_op_interpolation(x, w, b, n_steps, interp, method, memory, checkpoint, layer, activation, norm):
    """The block as it was computed before the op interpolated the controls itself: the controls interpolated in
    Python (autograd keeps every row) and the op handed the rows."""
    K, bb = reference.interpolate_controls(w, b, n_steps, interp, method)
    stride = functional.checkpoint_stride(checkpoint, n_steps)
    return ops.ode_forward(x, K, bb, 1.0 / n_steps, layer, activation, stride, norm, method, memory)[0]


@pytest.mark.parametrize("method,memory,checkpoint", [("leapfrog", "reversible", False), ("leapfrog", "states", 2),
                                                      ("euler", "states", False), ("euler", "states", True),
                                                      ("rk4", "states", False), ("rk4", "states", 1)])
@pytest.mark.parametrize("interp,M", [("constant", 3), ("constant", 7), ("linear", 4), ("linear", 1),
                                      ("constant", 6)])  # 6 = N: one control per step
@pytest.mark.parametrize("layer,activation,norm", [("double_sym", "tanh", "none"), ("single", "relu", "tv")])
def test_gradients_unchanged_by_the_in_op_interpolation(method, memory, checkpoint, interp, M, layer, activation,
                                                        norm):
    """float64: the output and every gradient within 1e-12 of the controls interpolated in Python."""
    N = 6
    x, w, b = make_inputs(2, 3, 5, 4, M, 3, seed=M)
    gy = random_like(x, seed=8)
    cfg = dict(layer=layer, activation=activation, norm=norm)
    y = _forward(x, w, b, T=1.0, n_steps=N, interp=interp, method=method, memory=memory, checkpoint=checkpoint,
                 **cfg)
    y_old = _before_in_op_interpolation(x, w, b, N, interp, method, memory, checkpoint, **cfg)
    assert_close_rel(y, y_old, 1e-12, "output")
    for name, a, r in zip(("x", "weight", "bias"), torch.autograd.grad(y, (x, w, b), gy),
                          torch.autograd.grad(y_old, (x, w, b), gy)):
        assert_close_rel(a, r, 1e-12, f"grad {name}")


def test_op_interpolation_rows_match_the_reference():
    """Every (method, N, M, interp) with N <= 7, M <= 9: the op fed the controls gives, to rounding, what it gives
    fed the rows of reference.interpolation_matrix (a row on the wrong control would be off by O(1))."""
    g = torch.Generator().manual_seed(10)
    x = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)
    for method in METHODS:
        for N in range(1, 8):
            for M in range(1, 10):
                w = torch.randn(M, 2, 2, 1, 1, generator=g, dtype=torch.float64)
                b = torch.randn(M, 2, generator=g, dtype=torch.float64)
                for interp in ("constant", "linear"):
                    K, bb = reference.interpolate_controls(w, b, N, interp, method)
                    config = (1.0 / N, "single", "identity", 0, "none", method, "states")
                    want = torch.ops.contres.ode_forward(x, K.contiguous(), bb.contiguous(), *config)[0]
                    got = torch.ops.contres.ode_forward(x, w, b, *config, interp, N)[0]
                    assert_close_rel(got, want, 1e-13, f"{method} N={N} M={M} {interp}")


def test_op_with_controls_checks_n_steps():
    x, w, b = make_inputs(2, 3, 5, 4, 3, 3, requires_grad=False)
    args = (x, w, b, 0.25, "single", "relu", 0, "none", "euler", "states")
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        torch.ops.contres.ode_forward(*args, "linear", 0)
    with pytest.raises(ValueError, match="interp must be one of none, constant, linear"):
        torch.ops.contres.ode_forward(*args, "cubic", 4)
    with pytest.raises(ValueError, match="n_steps = 4 disagrees with the 3 rows"):
        torch.ops.contres.ode_forward(*args, "none", 4)
    assert torch.equal(torch.ops.contres.ode_forward(*args, "none", 3)[0], torch.ops.contres.ode_forward(*args)[0])
    # a step count past 2^31 - 1 is refused at once (the rows are formed one at a time, in 64-bit products)
    for method in ("euler", "rk4"):
        margs = args[:8] + (method, "states")
        for n in (2 ** 31, 2 ** 62):
            with pytest.raises(ValueError, match="n_steps and the number of controls .* at most 2147483647"):
                torch.ops.contres.ode_forward(*margs, "constant", n)
            with pytest.raises(ValueError, match="at most 2147483647"):
                torch.ops.contres.ode_backward(x, x, w, b, torch.empty(0), [], *margs[3:], "linear", n)
