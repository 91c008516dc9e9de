"""Mixed precision on the CPU (the op's conv_dtype, what torch.autocast runs by default): the state, the output
and the gradients stay float32 while the convolutions run in bf16 or fp16, as plain per-op autocast does.

Against the float32 result, the fused block's error (output, dx, dW, db) must be no worse than plain per-op
autocast's (the reference under torch.autocast), for every method, both layers, norm="tv", checkpointing and
memory="reversible", in bf16 and fp16. Both round the same convolutions' outputs to the low dtype, but with other
algorithms (channels_last here, NCHW there), so they differ by rounding noise: the test compares relative L2
errors (stable, unlike the max-norm) averaged over three draws. Smooth activations: each component within 1.25x
of plain autocast's and their sum within 1.1x (measured: the fused errors are 0.4-1.1x plain's, their sums
0.6-1.02x). relu and leaky_relu: a z within rounding of the kink takes the other branch in one implementation
than in the other, and each such flip moves the gradients by O(h |lam|) (single draws differ up to 3x either
way), so their output is held to 1.25x and the gradients' sum to 1.5x (measured: 0.3-1.07x). The whole-block low
precision of autocast_state="reduced" has 1.1-25x plain's output error (about 3x typically).

Also: what the forward keeps (the convolutions' low-precision inputs: about half of plain autocast's activation
memory for single/relu), opcheck of the op with conv_dtype, and its input checks.
"""
from __future__ import annotations

import pytest
import torch

import contres
from contres.bench.memory import saved_bytes
from conftest import CUDA_OK, CUDA_SKIP_REASON, make_inputs, random_like, rel_err

AMP_DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]

# (method, layer, activation, options): every method and layer, tv, checkpointing, reversible, the aux kinds
CONFIGS = [
    ("euler", "single", "relu", {}),
    ("euler", "double_sym", "tanh", {}),
    ("euler", "single", "identity", {}),
    ("euler", "double_sym", "sigmoid", {"checkpoint": 2}),
    ("rk4", "single", "relu", {}),
    ("rk4", "double_sym", "tanh", {}),
    ("rk4", "single", "leaky_relu", {"checkpoint": 2}),
    ("leapfrog", "single", "relu", {}),
    ("leapfrog", "double_sym", "tanh", {}),
    ("leapfrog", "single", "sigmoid", {"memory": "reversible"}),
    ("leapfrog", "double_sym", "tanh", {"checkpoint": 3}),
    ("euler", "single", "tanh", {"norm": "tv"}),
    ("rk4", "double_sym", "relu", {"norm": "tv"}),
    # controls the op interpolates between (a row of two controls is mixed in float32, then cast)
    ("euler", "single", "tanh", {"interp": "linear", "controls": 3}),
    ("rk4", "double_sym", "tanh", {"interp": "linear", "controls": 3}),
    ("leapfrog", "single", "sigmoid", {"memory": "reversible", "interp": "linear", "controls": 2}),
]


def _config_id(c):
    method, layer, act, opts = c
    return "-".join([method, layer, act] + [f"{k}={v}" for k, v in opts.items()])


def _block(x, w, b, gy, autocast, backend, **kw):
    """Output and (dx, dW, db) of one block call, under autocast to `autocast` when given."""
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        y = contres.functional.ode_block(x, w, b, backend=backend, **kw)
    return y, torch.autograd.grad(y, (x, w, b), gy.to(y.dtype))


def _l2_errors(y, grads, y32, g32):
    """||a - ref|| / ||ref|| of the output and of (dx, dW, db)."""
    def err(a, r):
        a, r = a.detach().double(), r.detach().double()
        return ((a - r).norm() / r.norm()).item()
    return [err(y, y32)] + [err(g, r) for g, r in zip(grads, g32)]


KINKED = ("relu", "leaky_relu")
SEEDS = (11, 12, 13)


# C = 16 runs the vectorised paths (whole vectors of channels for the bias sum and tv), C = 12 with 7x5 pixels
# the scalar tails (numel % 8 != 0), the per-lane bias sums and the scalar tv loops.
@pytest.mark.parametrize("shape", [(2, 16, 6, 6), (3, 12, 7, 5)], ids=["C16", "C12-tails"])
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("amp", AMP_DTYPES)
def test_error_no_worse_than_per_op_autocast(amp, config, shape):
    method, layer, activation, opts = config
    B, C, H, W = shape
    N = 4
    kw = dict(T=1.0, n_steps=N, layer=layer, activation=activation, method=method, norm=opts.get("norm", "none"),
              interp=opts.get("interp", "constant"))
    fused_kw = dict(kw, checkpoint=opts.get("checkpoint", False), memory=opts.get("memory", "states"))
    plain, fused = [], []
    for seed in SEEDS:
        x, w, b = make_inputs(B, C, H, W, opts.get("controls", N), 3, dtype=torch.float32, seed=seed, scale=0.6)
        gy = random_like(x, seed=seed + 100)
        y32, g32 = _block(x, w, b, gy, None, "reference", **kw)
        y_plain, g_plain = _block(x, w, b, gy, amp, "reference", **kw)
        y, grads = _block(x, w, b, gy, amp, "fused", **fused_kw)
        assert y.dtype == y_plain.dtype == torch.float32, "the output dtype is plain autocast's"
        assert all(g.dtype == torch.float32 for g in grads)
        plain.append(_l2_errors(y_plain, g_plain, y32, g32))
        fused.append(_l2_errors(y, grads, y32, g32))
    plain = [sum(c) / len(SEEDS) for c in zip(*plain)]
    fused = [sum(c) / len(SEEDS) for c in zip(*fused)]
    assert fused[0] > 0, "the block ran in low precision"
    what = f"fused {[f'{e:.2e}' for e in fused]} vs plain autocast {[f'{e:.2e}' for e in plain]} (out, dx, dW, db)"
    assert fused[0] <= 1.25 * plain[0], what
    if activation in KINKED:
        assert sum(fused[1:]) <= 1.5 * sum(plain[1:]), what
    else:
        assert all(f <= 1.25 * p for f, p in zip(fused, plain)), what
        assert sum(fused) <= 1.1 * sum(plain), what


@pytest.mark.parametrize("method,layer,activation", [("euler", "single", "relu"), ("rk4", "double_sym", "tanh"),
                                                     ("leapfrog", "single", "sigmoid")])
@pytest.mark.parametrize("amp", AMP_DTYPES)
def test_inference_under_autocast_keeps_nothing_and_matches_training(amp, method, layer, activation):
    """Under autocast with no gradient to take, the mixed-precision forward keeps nothing (memory='none') and
    gives the training forward's output bit for bit: the same passes write the same float32 states and casts."""
    x, w, b = make_inputs(2, 16, 6, 6, 3, 3, dtype=torch.float32, seed=21, scale=0.6)
    kw = dict(T=1.0, n_steps=5, layer=layer, activation=activation, method=method, interp="linear",
              backend="fused")
    with torch.autocast("cpu", dtype=amp):
        y_train = contres.functional.ode_block(x, w, b, **kw)
        with torch.no_grad():
            nbytes, y_infer = saved_bytes(lambda: contres.functional.ode_block(x, w, b, **kw), (x, w, b))
    assert y_train.requires_grad and not y_infer.requires_grad
    assert y_infer.dtype == torch.float32
    assert nbytes == y_infer.untyped_storage().nbytes(), "an inference forward saves nothing besides its output"
    assert torch.equal(y_infer, y_train.detach())


@pytest.mark.parametrize("amp", AMP_DTYPES)
def test_reduced_state_is_less_accurate(amp):
    """autocast_state="reduced" (the whole block in the low dtype) is the documented less accurate option: here
    (leapfrog keeps adding to the state, whose low-precision rounding the default avoids) its output error is
    many times the default's (measured 25x in bf16 and fp16), and its output has the low dtype."""
    x, w, b = make_inputs(2, 16, 6, 6, 4, 3, dtype=torch.float32, seed=11, scale=0.6)
    gy = random_like(x, seed=12)
    kw = dict(T=1.0, n_steps=4, layer="single", activation="sigmoid", method="leapfrog")
    y32, _ = _block(x, w, b, gy, None, "reference", **kw)
    y, _ = _block(x, w, b, gy, amp, "fused", **kw)
    y_red, _ = _block(x, w, b, gy, amp, "fused", autocast_state="reduced", **kw)
    assert y_red.dtype == amp and y.dtype == torch.float32
    assert rel_err(y_red, y32) > 5 * rel_err(y, y32)


def _op_args(method="euler", N=3, C=8, **kw):
    x, w, b = make_inputs(2, C, 5, 6, 2 * N + 1 if method == "rk4" else N, 3, dtype=torch.float32, seed=5,
                          requires_grad=False)
    return x, w, b, 1.0 / N


@pytest.mark.parametrize("conv_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("method,layer,activation,checkpoint,norm,memory", [
    ("euler", "single", "relu", 0, "none", "states"), ("rk4", "double_sym", "tanh", 0, "none", "states"),
    ("leapfrog", "single", "sigmoid", 2, "none", "states"), ("leapfrog", "double_sym", "relu", 0, "none",
                                                               "reversible"),
    ("euler", "single", "tanh", 0, "tv", "states")], ids=lambda v: str(v))
def test_opcheck_conv_dtype(conv_dtype, method, layer, activation, checkpoint, norm, memory):
    """The op with conv_dtype: its fake kernels give the real saved dtypes (full storage: the convolution inputs
    in conv_dtype; checkpoints and reversible: float32 running states), the backward takes them back."""
    x, w, b, h = _op_args(method)
    args = (x, w, b, h, layer, activation, checkpoint, norm, method, memory, "none", 0, conv_dtype)
    torch.library.opcheck(torch.ops.contres.ode_forward.default,
                          tuple(t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in args))
    xd, wd, bd = (t.detach() for t in (x, w, b))
    out, states, aux = torch.ops.contres.ode_forward(xd, wd, bd, *args[3:])
    assert out.dtype == torch.float32
    full = checkpoint == 0 and memory == "states"
    assert states.dtype == (conv_dtype if full else torch.float32)
    assert all(a.dtype in (torch.uint8, conv_dtype) for a in aux)
    gy = random_like(x, seed=6)
    bargs = (gy, xd, wd, bd, states, aux, h, layer, activation, checkpoint, norm, method, memory, "none", 0,
             conv_dtype)
    torch.library.opcheck(torch.ops.contres.ode_backward.default, bargs)
    gx, gw, gb, _, _ = torch.ops.contres.ode_backward(*bargs)
    assert gx.dtype == gw.dtype == gb.dtype == torch.float32


def test_saved_memory_half_of_per_op_autocast():
    """What the forward keeps: the convolutions' bf16 inputs and 1-bit masks for single/relu, about half of plain
    autocast's (which keeps the bf16 conv input and the bf16 relu output of every step); double_sym/tanh keeps
    the conv input and act(z), which plain autocast keeps too (besides more)."""
    x, w, b = make_inputs(4, 16, 8, 8, 8, 3, dtype=torch.float32, seed=3)
    ratios = {}
    for layer, act in (("single", "relu"), ("double_sym", "tanh")):
        kw = dict(T=1.0, n_steps=8, layer=layer, activation=act)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused, _ = saved_bytes(lambda: contres.functional.ode_block(x, w, b, backend="fused", **kw), (x, w, b))
            plain, _ = saved_bytes(lambda: contres.functional.ode_block(x, w, b, backend="reference", **kw),
                                   (x, w, b))
        ratios[layer] = fused / plain
    assert 0.4 < ratios["single"] < 0.6, ratios
    assert ratios["double_sym"] <= 1.0, ratios


def test_conv_dtype_bad_input():
    x, w, b, h = _op_args()
    for conv_dtype, match in ((torch.float64, "conv_dtype must be x's dtype"), (torch.int32, "conv_dtype")):
        with pytest.raises(TypeError, match=match):
            torch.ops.contres.ode_forward(x, w, b, h, "single", "relu", 0, "none", "euler", "states", "none", 0,
                                          conv_dtype)
    with pytest.raises(TypeError, match="float32 x"):  # mixed precision needs a float32 state
        torch.ops.contres.ode_forward(x.double(), w.double(), b.double(), h, "single", "relu", 0, "none", "euler",
                                      "states", "none", 0, torch.bfloat16)
    _, states, aux = torch.ops.contres.ode_forward(x, w, b, h, "single", "relu", 0, "none", "euler", "states",
                                                   "none", 0, torch.bfloat16)
    with pytest.raises(TypeError, match="states must be .* of dtype BFloat16"):  # a float32 forward's states
        _, states32, aux32 = torch.ops.contres.ode_forward(x, w, b, h, "single", "relu", 0)
        torch.ops.contres.ode_backward(x, x, w, b, states32, aux32, h, "single", "relu", 0, "none", "euler",
                                       "states", "none", 0, torch.bfloat16)
    with pytest.raises(ValueError, match="autocast_state must be one of"):
        contres.functional.ode_block(x, w, b, n_steps=3, autocast_state="bf16")
    with pytest.raises(ValueError, match="autocast_state must be one of"):
        contres.ODEBlock(8, autocast_state="half")


def test_block_autocast_state():
    """ODEBlock passes autocast_state through (and keeps it when refined); the default needs no mention."""
    blk = contres.ODEBlock(8, n_steps=2, autocast_state="reduced")
    assert "autocast_state='reduced'" in repr(blk) and blk.refine(n_steps=4).autocast_state == "reduced"
    assert "autocast_state" not in repr(contres.ODEBlock(8, n_steps=2))
    x = torch.randn(2, 8, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert blk(x).dtype == torch.bfloat16 and contres.ODEBlock(8, n_steps=2)(x).dtype == torch.float32


def test_double_backward_mixed():
    """backward(create_graph=True) through the mixed op recomputes the block with the reference under autocast:
    the gradient of the gradient exists and is close to the float32 one."""
    x, w, b = make_inputs(2, 8, 5, 5, 2, 3, dtype=torch.float32, seed=4)
    out = []
    for amp in (None, torch.bfloat16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
            y = contres.functional.ode_block(x, w, b, n_steps=2, layer="single", activation="tanh", backend="fused")
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        out.append(torch.autograd.grad(gx.sum(), w)[0])
    assert rel_err(out[1], out[0]) < 5e-2


@pytest.mark.skipif(not contres.functional._ext.has_kernels("cpu") or not torch.cpu._is_avx512_bf16_supported(),
                    reason="needs a CPU with native bf16 (avx512_bf16 or AMX): elsewhere oneDNN ignores the setting")
def test_mkldnn_fp32_precision_is_honoured():
    """torch.backends.mkldnn.conv.fp32_precision = "bf16" (float32 convolutions with bf16 math) reaches the fused
    op's convolutions: its result moves off the float32 one by bf16 rounding, and agrees with eager's under the
    same setting."""
    x, w, b = make_inputs(4, 32, 16, 16, 4, 3, dtype=torch.float32, seed=2, requires_grad=False)
    kw = dict(n_steps=4, layer="single", activation="tanh")
    conv = torch.backends.mkldnn.conv
    saved = conv.fp32_precision
    y32 = contres.functional.ode_block(x, w, b, backend="fused", **kw)
    try:
        conv.fp32_precision = "bf16"
        y16 = contres.functional.ode_block(x, w, b, backend="fused", **kw)
        y_eager = contres.functional.ode_block(x, w, b, backend="reference", **kw)
    finally:
        conv.fp32_precision = saved
    assert 1e-5 < rel_err(y16, y32) < 3e-2
    assert rel_err(y16, y_eager) < 3e-2


@pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)
def test_cuda_keeps_one_dtype():
    """CUDA takes no conv_dtype (its passes take one dtype): the op refuses it clearly, and under autocast the
    block runs wholly in the autocast dtype on CUDA (autocast_state is "reduced" there whatever is asked)."""
    x, w, b, h = (t.cuda() if isinstance(t, torch.Tensor) else t for t in _op_args())
    with pytest.raises(TypeError, match="runs on the CPU only"):
        torch.ops.contres.ode_forward(x, w, b, h, "single", "relu", 0, "none", "euler", "states", "none", 0,
                                      torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = contres.functional.ode_block(x, w[:3], b[:3], n_steps=3, backend="fused")
    assert y.dtype == torch.bfloat16
