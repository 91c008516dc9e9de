"""The fused cuDNN step graphs (csrc/cuda/cudnn_step) on a GPU, against plain ATen computations in float64.

Each run_* (through contres._C._cudnn_*) is compared with conv2d / conv_transpose2d / the conv weight gradient plus
the elementwise maths of activations.h, evaluated in float64 on the same (rounded) inputs, for every activation
and gate kind, in float32 on TF32 (relaxed tolerance) and in true float32, bfloat16 and float16. Also: outputs
aliasing inputs, a non-default stream, the plan cache (bounded, visible, left alone at exit), several threads,
CUDA-graph capture, NaN conventions. Needs a GPU and a build with the fused graphs; skipped otherwise. Every graph
a test builds is compiled with NVRTC once (0.3-1.2 s), so the matrix is kept to one shape for the full product and
a few for the rest.
"""
from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.nn.functional as F

import contres

HAS_FUSION = bool(contres.build_info().get("cudnn_fusion"))
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_FUSION),
                                reason="needs a CUDA GPU and contres built with the fused cuDNN graphs")

if HAS_FUSION:
    from contres import _C

LEAKY_SLOPE = 0.01  # contres::kLeakySlope
ACT_GATES = [("identity", "none"), ("identity", "value"), ("relu", "mask"), ("relu", "value"),
             ("leaky_relu", "mask"), ("leaky_relu", "value"), ("tanh", "value"), ("sigmoid", "value")]
# Precisions: (id, dtype, TF32 allowed). Tolerances are max|out - ref| / max|ref| against float64.
PRECISIONS = {"tf32": (torch.float32, True), "fp32": (torch.float32, False), "bf16": (torch.bfloat16, True),
              "fp16": (torch.float16, True)}
TOL = {"tf32": 5e-3, "fp32": 2e-5, "bf16": 2e-2, "fp16": 5e-3}
SHAPE = (3, 16, 9, 11, 3)  # B, C, H, W, k: the full matrix
SHAPES = [(2, 8, 5, 7, 1), (4, 32, 12, 10, 5), (8, 64, 16, 16, 3)]  # a few more for the main graphs
# The full act x gate product runs on TF32 and bfloat16; true float32 and float16 on a subset.
FULL = [(p, a, g) for p in ("tf32", "bf16") for a, g in ACT_GATES] + \
       [(p, a, g) for p in ("fp32", "fp16") for a, g in (("relu", "mask"), ("leaky_relu", "value"), ("tanh", "value"))]


@pytest.fixture(autouse=True)
def _precision_flags():
    old_tf32, old_det = torch.backends.cudnn.allow_tf32, torch.are_deterministic_algorithms_enabled()
    yield
    torch.backends.cudnn.allow_tf32 = old_tf32
    torch.use_deterministic_algorithms(old_det)


def set_precision(prec: str) -> torch.dtype:
    dtype, tf32 = PRECISIONS[prec]
    torch.backends.cudnn.allow_tf32 = tf32
    return dtype


def cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def randn(shape, dtype, seed, scale=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(shape, device="cuda", dtype=torch.float64, generator=g) * scale).to(dtype)


def inputs(shape, dtype, seed=0):
    """u (B, C, H, W), K (C, C, k, k) with a fan-in scale, b (C); u and K in channels_last."""
    B, C, H, W, k = shape
    u = cl(randn((B, C, H, W), dtype, seed))
    K = cl(randn((C, C, k, k), dtype, seed + 1, 1.0 / math.sqrt(C * k * k)))
    b = randn((C,), dtype, seed + 2, 0.3)
    return u, K, b


def f64(t):
    return t.double()


def act_ref(name, z):
    return {"identity": lambda x: x, "relu": torch.relu, "leaky_relu": lambda x: F.leaky_relu(x, LEAKY_SLOPE),
            "tanh": torch.tanh, "sigmoid": torch.sigmoid}[name](z)


def mask_ref(name, z):  # activations.h's mask_bit(z)
    return ~(z <= 0) if name == "relu" else z > 0


def dact_ref(name, gate_kind, gate):
    """act' from the gate (float64), as activations.h's df_sign / df_value."""
    if name == "identity" or gate_kind == "none":
        return torch.ones_like(gate, dtype=torch.float64) if gate is not None else 1.0
    if name in ("relu", "leaky_relu"):
        pos = gate.bool() if gate_kind == "mask" else (gate.double() > 0)
        low = 0.0 if name == "relu" else LEAKY_SLOPE
        return torch.where(pos, 1.0, low).double()
    a = gate.double()
    return 1 - a * a if name == "tanh" else a * (1 - a)


def random_gate(name, gate_kind, shape, dtype, seed):
    """A gate as the forward would keep it: mask bytes, or a = act(z) in the state dtype."""
    if gate_kind == "none":
        return None
    z = cl(randn(shape, torch.float64, seed))
    if gate_kind == "mask":
        return cl(mask_ref(name, z).to(torch.uint8))
    return cl(act_ref(name, z).to(dtype))


def rel_err(a, ref):
    a, ref = a.double(), ref.double()
    scale = ref.abs().max().item()
    err = (a - ref).abs().max().item()
    return err / scale if scale > 0 else err


def assert_close(a, ref, tol, what):
    assert not torch.isnan(a).any() or torch.isnan(ref).any(), f"{what}: NaN in the fused result"
    err = rel_err(a, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def conv(x, K, b=None):
    return F.conv2d(x, K, b, padding=K.shape[-1] // 2)


def conv_t(x, K):
    return F.conv_transpose2d(x, K, padding=K.shape[-1] // 2)


def expect_fused(ok, what):
    assert ok, f"{what}: the fused graph was not run ({_C._cudnn_fusion_built_graphs()[-3:]})"


def ran(ok, prec, gate_kind="none", bias_out=False):
    """Whether to check the outputs. cuDNN 9.24 on Hopper has no true-float32 engine for a mask operand or the
    fused bias sum, so a decline is accepted there (another cuDNN may have one: then its numbers must be right);
    everywhere else the graph must run."""
    if not ok:
        assert prec == "fp32" and (gate_kind == "mask" or bias_out), \
            f"declined: {_C._cudnn_fusion_built_graphs()[-3:]}"
    return ok


# ---- one test per run_* ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("prec,act,gate", FULL, ids=["-".join(c) for c in FULL])
def test_forward_single(prec, act, gate):
    dtype = set_precision(prec)
    u, K, b = inputs(SHAPE, dtype)
    h = 0.25
    u_next = torch.empty_like(u)
    gate_out = None if gate == "none" else torch.empty_like(u, dtype=torch.uint8 if gate == "mask" else dtype)
    if not ran(_C._cudnn_forward_single(u, K, b, h, act, gate, u_next, gate_out), prec, gate):
        return
    z = conv(f64(u), f64(K), f64(b))
    a = act_ref(act, z)
    assert_close(u_next, f64(u) + h * a, TOL[prec], "u_next")
    if gate == "value":
        assert_close(gate_out, a, TOL[prec], "a")
    elif gate == "mask":
        ref = mask_ref(act, z)
        wrong = gate_out.bool() != ref
        near_kink = z.abs() <= 4 * TOL[prec] * z.abs().max()  # z's rounding may flip its sign there
        assert not (wrong & ~near_kink).any(), f"{int(wrong.sum())} mask bytes wrong away from z = 0"
        assert gate_out.max().item() <= 1


@pytest.mark.parametrize("prec,act", [(p, a) for p in ("tf32", "bf16")
                                      for a in ("identity", "relu", "leaky_relu", "tanh", "sigmoid")]
                         + [("fp32", "tanh"), ("fp16", "relu")])
def test_conv_bias_act(prec, act):
    dtype = set_precision(prec)
    u, K, b = inputs(SHAPE, dtype, seed=10)
    a_out = torch.empty_like(u)
    expect_fused(_C._cudnn_conv_bias_act(u, K, b, act, a_out), "conv_bias_act")
    assert_close(a_out, act_ref(act, conv(f64(u), f64(K), f64(b))), TOL[prec], "a")


@pytest.mark.parametrize("prec", list(PRECISIONS))
@pytest.mark.parametrize("alias", [False, True], ids=["out", "in-place"])
def test_conv_axpy(prec, alias):
    dtype = set_precision(prec)
    v, K, _ = inputs(SHAPE, dtype, seed=20)
    base = cl(randn(v.shape, dtype, 23))
    ref = f64(base) - 0.125 * conv(f64(v), f64(K))
    y = base if alias else torch.empty_like(v)
    expect_fused(_C._cudnn_conv_axpy(v, K, base, -0.125, y), "conv_axpy")
    assert_close(y, ref, TOL[prec], "y")


@pytest.mark.parametrize("prec,act,gate", FULL, ids=["-".join(c) for c in FULL])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_dgrad_gate(prec, act, gate, bias):
    dtype = set_precision(prec)
    g, K, _ = inputs(SHAPE, dtype, seed=30)
    lam = cl(randn(g.shape, dtype, 33))
    gate_t = random_gate(act, gate, g.shape, dtype, 34)
    scale = 0.25
    lam_out, g_out = torch.empty_like(g), torch.empty_like(g)
    bias_out = torch.full((g.shape[1],), float("nan"), device="cuda") if bias else None  # must be overwritten
    if not ran(_C._cudnn_dgrad_gate(g, K, lam, gate_t, act, gate, scale, lam_out, g_out, bias_out), prec, gate, bias):
        return
    lam_ref = f64(lam) + conv_t(f64(g), f64(K))
    g_ref = scale * dact_ref(act, gate, gate_t) * lam_ref
    assert_close(lam_out, lam_ref, TOL[prec], "lam_out")
    assert_close(g_out, g_ref, TOL[prec], "g_out")
    if bias:
        assert_close(bias_out, g_ref.sum((0, 2, 3)), TOL[prec], "bias_out")


@pytest.mark.parametrize("prec", list(PRECISIONS))
@pytest.mark.parametrize("alpha", [1.0, -0.125])
def test_dgrad_add_in_place(prec, alpha):
    dtype = set_precision(prec)
    g, K, _ = inputs(SHAPE, dtype, seed=40)
    lam = cl(randn(g.shape, dtype, 43))
    ref = f64(lam) + alpha * conv_t(f64(g), f64(K))
    expect_fused(_C._cudnn_dgrad_add(g, K, lam, lam, alpha), "dgrad_add")  # lam_out aliases lam
    assert_close(lam, ref, TOL[prec], "lam")


@pytest.mark.parametrize("prec,act,gate", FULL, ids=["-".join(c) for c in FULL])
def test_conv_gate(prec, act, gate):
    dtype = set_precision(prec)
    v, K, _ = inputs(SHAPE, dtype, seed=50)
    gate_t = random_gate(act, gate, v.shape, dtype, 54)
    bias = prec != "fp32"
    g_out = torch.empty_like(v)
    bias_out = torch.empty(v.shape[1], device="cuda") if bias else None
    if not ran(_C._cudnn_conv_gate(v, K, gate_t, act, gate, -0.25, g_out, bias_out), prec, gate, bias):
        return
    g_ref = -0.25 * dact_ref(act, gate, gate_t) * conv(f64(v), f64(K))
    assert_close(g_out, g_ref, TOL[prec], "g_out")
    if bias:
        assert_close(bias_out, g_ref.sum((0, 2, 3)), TOL[prec], "bias_out")


@pytest.mark.parametrize("prec", list(PRECISIONS))
@pytest.mark.parametrize("out", ["float32-krsc", "state-kcrs"])
def test_wgrad(prec, out):
    dtype = set_precision(prec)
    u, K, _ = inputs(SHAPE, dtype, seed=60)
    g = cl(randn(u.shape, dtype, 63))
    dK = torch.empty(K.shape, device="cuda", dtype=torch.float32 if out.startswith("float32") else dtype)
    dK = cl(dK) if out.endswith("krsc") else dK.contiguous()
    expect_fused(_C._cudnn_wgrad(u, g, dK), "wgrad")
    ref = torch.nn.grad.conv2d_weight(f64(u), K.shape, f64(g), padding=K.shape[-1] // 2)
    tol = TOL[prec] * (2 if dtype != torch.float32 and dK.dtype != torch.float32 else 1)  # dK rounded too
    assert_close(dK, ref, tol, "dK")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}C{}{}x{}k{}".format(*s))
@pytest.mark.parametrize("prec", ["tf32", "bf16"])
def test_shapes_single_layer_step(shape, prec):
    """A whole single-layer step and its adjoint step at other shapes and kernel sizes."""
    dtype = set_precision(prec)
    u, K, b = inputs(shape, dtype, seed=70)
    h = 0.1
    u_next, mask = torch.empty_like(u), torch.empty_like(u, dtype=torch.uint8)
    expect_fused(_C._cudnn_forward_single(u, K, b, h, "relu", "mask", u_next, mask), "forward_single")
    z = conv(f64(u), f64(K), f64(b))
    assert_close(u_next, f64(u) + h * torch.relu(z), TOL[prec], "u_next")
    lam = cl(randn(u.shape, dtype, 73))
    g_prev = cl(randn(u.shape, dtype, 74))
    lam_out, g_out, db = torch.empty_like(u), torch.empty_like(u), torch.empty(u.shape[1], device="cuda")
    expect_fused(_C._cudnn_dgrad_gate(g_prev, K, lam, mask, "relu", "mask", h, lam_out, g_out, db), "dgrad_gate")
    lam_ref = f64(lam) + conv_t(f64(g_prev), f64(K))
    g_ref = h * mask.double() * lam_ref
    assert_close(lam_out, lam_ref, TOL[prec], "lam_out")
    assert_close(g_out, g_ref, TOL[prec], "g_out")
    assert_close(db, g_ref.sum((0, 2, 3)), TOL[prec], "bias_grad")


# ---- contract: aliasing, streams, cache, threads, capture, NaN ---------------------------------------------------

def test_supports_on_this_gpu():
    major, _ = torch.cuda.get_device_capability()
    assert _C._cudnn_fusion_supports(torch.bfloat16, 16, 3, "relu") == (major >= 8)
    assert not _C._cudnn_fusion_supports(torch.bfloat16, 12, 3, "relu")  # C % 8
    assert not _C._cudnn_fusion_supports(torch.float64, 16, 3, "relu")
    assert not _C._cudnn_fusion_supports(torch.float32, 16, 4, "relu")  # even kernel


def test_unusable_arguments_return_false_and_inconsistent_ones_raise():
    set_precision("bf16")
    u, K, b = inputs(SHAPE, torch.bfloat16)
    out = torch.empty_like(u)
    assert not _C._cudnn_conv_bias_act(u.contiguous(), K, b, "relu", out)  # NCHW: the fused path cannot take it
    assert not _C._cudnn_conv_bias_act(u.double(), K.double(), b.double(), "relu", out.double())
    with pytest.raises(RuntimeError, match="may not alias"):
        _C._cudnn_forward_single(u, K, b, 0.1, "relu", "mask", u, None)  # the convolution reads u's neighbours
    with pytest.raises(RuntimeError, match="shape"):
        _C._cudnn_conv_bias_act(u, K, b, "relu", out[:1])
    with pytest.raises(RuntimeError, match="may not alias"):
        _C._cudnn_dgrad_gate(u, K, out, None, "identity", "none", 1.0, out, u, None)  # g_out aliases g


def test_non_default_stream():
    """The graphs run on the current stream: the input is written on a side stream behind a long sleep, so a
    kernel on any other stream would read it too early."""
    set_precision("bf16")
    u, K, b = inputs(SHAPE, torch.bfloat16, seed=80)
    fresh = cl(randn(u.shape, torch.bfloat16, 81))
    u_next = torch.empty_like(u)
    expect_fused(_C._cudnn_conv_bias_act(u, K, b, "tanh", u_next), "warm-up")  # build outside the timed part
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)
        u.copy_(fresh)
        expect_fused(_C._cudnn_conv_bias_act(u, K, b, "tanh", u_next), "side stream")
    torch.cuda.synchronize()
    assert_close(u_next, torch.tanh(conv(f64(fresh), f64(K), f64(b))), TOL["bf16"], "a on the side stream")


def records(key_part):
    return [r for r in _C._cudnn_fusion_built_graphs() if key_part in r["key"]]


def test_cache_builds_once():
    set_precision("bf16")
    contres.empty_cudnn_plan_cache()
    u, K, b = inputs((2, 8, 6, 6, 3), torch.bfloat16, seed=90)
    out = torch.empty_like(u)
    expect_fused(_C._cudnn_conv_bias_act(u, K, b, "sigmoid", out), "first call")
    first = records("conv_bias_act BFloat16 B2 C8 6x6 k3 sigmoid")
    assert len(first) == 1 and first[0]["runs"] == 1 and first[0]["build_s"] > 0, first
    expect_fused(_C._cudnn_conv_bias_act(u, K, b, "sigmoid", out), "second call")
    second = records("conv_bias_act BFloat16 B2 C8 6x6 k3 sigmoid")
    assert len(second) == 1 and second[0]["runs"] == 2 and second[0]["build_s"] == first[0]["build_s"], second
    assert not second[0]["plan"].startswith("unsupported"), second


def test_failed_key_is_remembered():
    """True float32 has no engine for a mask operand (cuDNN 9.24, Hopper): the first call tries and fails, the
    second answers from the cache. Should cuDNN gain one, the result must then be true float32."""
    set_precision("fp32")
    contres.empty_cudnn_plan_cache()
    u, K, b = inputs(SHAPE, torch.float32, seed=100)
    u_next, mask = torch.empty_like(u), torch.empty_like(u, dtype=torch.uint8)
    ok = _C._cudnn_forward_single(u, K, b, 0.5, "relu", "mask", u_next, mask)
    rec = records("fwd_single Float")
    assert len(rec) == 1, rec
    if ok:
        assert_close(u_next, f64(u) + 0.5 * torch.relu(conv(f64(u), f64(K), f64(b))), TOL["fp32"], "u_next")
        return
    assert rec[0]["plan"].startswith("unsupported"), rec
    assert not _C._cudnn_forward_single(u, K, b, 0.5, "relu", "mask", u_next, mask)
    again = records("fwd_single Float")
    assert again == rec, again  # not rebuilt


def test_threads_share_one_plan():
    set_precision("bf16")
    contres.empty_cudnn_plan_cache()
    shape, n_threads, n_iter = (4, 16, 10, 10, 3), 4, 5
    errors = []

    def work(seed):
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                u, K, b = inputs(shape, torch.bfloat16, seed=seed)
                lam = cl(randn(u.shape, torch.bfloat16, seed + 3))
                for _ in range(n_iter):
                    out = torch.empty_like(u)
                    assert _C._cudnn_dgrad_add(u, K, lam, out, -0.5)
                    ref = f64(lam) - 0.5 * conv_t(f64(u), f64(K))
                    assert rel_err(out, ref) <= TOL["bf16"], rel_err(out, ref)
            stream.synchronize()
        except Exception as exc:  # reported below, from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(1000 + 10 * i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rec = records("dgrad_add BFloat16 B4 C16 10x10 k3")
    assert len(rec) == 1 and rec[0]["runs"] == n_threads * n_iter, rec


def test_cuda_graph_capture():
    """A plan is not built while capturing (run_* says false, and the key is not marked failed); once built it
    captures and replays."""
    set_precision("bf16")
    contres.empty_cudnn_plan_cache()
    u, K, b = inputs(SHAPE, torch.bfloat16, seed=110)
    out = torch.empty_like(u)
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph):
            built_while_capturing = _C._cudnn_conv_bias_act(u, K, b, "relu", out)
    assert not built_while_capturing
    assert not records("conv_bias_act"), "a plan was built or marked failed during capture"
    expect_fused(_C._cudnn_conv_bias_act(u, K, b, "relu", out), "warm-up")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph):
            assert _C._cudnn_conv_bias_act(u, K, b, "relu", out)
    u.copy_(cl(randn(u.shape, torch.bfloat16, 111)))
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert_close(out, torch.relu(conv(f64(u), f64(K), f64(b))), TOL["bf16"], "replayed")


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_nan_conventions(act):
    """A NaN z passes through act and counts as positive for relu's mask (!(z <= 0)) but not leaky_relu's (z > 0),
    as in activations.h."""
    set_precision("tf32")
    u, K, b = inputs(SHAPE, torch.float32, seed=120)
    u[0, :, 4, 5] = float("nan")
    u_next, mask = torch.empty_like(u), torch.empty_like(u, dtype=torch.uint8)
    expect_fused(_C._cudnn_forward_single(u, K, b, 0.5, act, "mask", u_next, mask), "forward_single")
    z = conv(f64(u), f64(K), f64(b))
    nan_z = torch.isnan(z)
    assert nan_z.any()
    assert torch.isnan(u_next[nan_z]).all()
    assert (mask[nan_z] == (1 if act == "relu" else 0)).all()
    finite = ~nan_z
    ref = f64(u) + 0.5 * act_ref(act, z)
    assert rel_err(u_next[finite], ref[finite]) <= TOL["tf32"]


def test_deterministic_mode():
    """With torch.use_deterministic_algorithms(True) only deterministic engines are taken: two runs agree bit
    for bit (or the graph is declined)."""
    set_precision("bf16")
    torch.use_deterministic_algorithms(True)
    g, K, _ = inputs((8, 32, 16, 16, 3), torch.bfloat16, seed=130)
    lam = cl(randn(g.shape, torch.bfloat16, 131))
    outs = []
    for _ in range(2):
        lam_out, g_out, db = torch.empty_like(g), torch.empty_like(g), torch.empty(g.shape[1], device="cuda")
        if not _C._cudnn_dgrad_gate(g, K, lam, None, "identity", "none", 0.5, lam_out, g_out, db):
            assert "deterministic" in records("dgrad_gate BFloat16 B8 C32")[0]["key"]
            return
        outs.append((lam_out, g_out, db))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_plan_cache_is_bounded_and_visible():
    set_precision("bf16")
    limit = contres.cudnn_plan_cache_stats()["max_plans"]
    contres.empty_cudnn_plan_cache()
    try:
        contres.set_cudnn_plan_cache_limit(1)
        before = contres.cudnn_plan_cache_stats()
        for seed, act in ((130, "relu"), (131, "tanh")):  # two graphs: the first is evicted for the second
            u, K, b = inputs((2, 8, 6, 6, 3), torch.bfloat16, seed=seed)
            expect_fused(_C._cudnn_conv_bias_act(u, K, b, act, torch.empty_like(u)), act)
        s = contres.cudnn_plan_cache_stats()
        assert s["plans"] == 1 and s["evictions"] > before["evictions"], s
        assert s["builds"] - before["builds"] == 2 and s["build_seconds"] > before["build_seconds"], s
        assert len(_C._cudnn_fusion_built_graphs()) == 1
        contres.set_cudnn_plan_cache_limit(0)  # no plans kept: the graphs decline and callers take ATen
        u, K, b = inputs((2, 8, 6, 6, 3), torch.bfloat16, seed=132)
        assert not _C._cudnn_conv_bias_act(u, K, b, "relu", torch.empty_like(u))
    finally:
        contres.set_cudnn_plan_cache_limit(limit)


def test_a_process_with_built_plans_exits_cleanly():
    """The plan cache is never destroyed: at exit its frontend graphs would be torn down after cuDNN and CUDA,
    which can turn a clean exit into a crash (exit code 139)."""
    import subprocess
    import sys

    code = ("import torch, contres\nfrom contres import _C\ntorch.backends.cudnn.allow_tf32 = True\n"
            "u = torch.randn(2, 8, 6, 6, device='cuda', dtype=torch.bfloat16).contiguous("
            "memory_format=torch.channels_last)\n"
            "K = torch.randn(8, 8, 3, 3, device='cuda', dtype=torch.bfloat16).contiguous("
            "memory_format=torch.channels_last)\n"
            "b = torch.randn(8, device='cuda', dtype=torch.bfloat16)\n"
            "assert _C._cudnn_conv_bias_act(u, K, b, 'relu', torch.empty_like(u))\nprint('built')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "built" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
