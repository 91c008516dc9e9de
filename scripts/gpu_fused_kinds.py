"""One call of one kind of fused cuDNN step graph on the GPU (csrc/cuda/cudnn_step), for a process of its own:
scripts/gpu_check.sh runs each kind so, with the cuDNN frontend's log on, so that a crash names its graph. Prints
whether the graph ran, its plan, and its error against the same computation in float64 ATen (bfloat16 on TF32
tensor cores, B4 C16 12x12, k 3).

    python scripts/gpu_fused_kinds.py KIND        KIND: one of KINDS below, or "all" (one process for all)
    GPU_CHECK_DRY_RUN=1 ... KIND                  checks the arguments only (no GPU, no torch)

Exit code: 0 ran and matched, 1 declined or off, 2 usage.
"""
from __future__ import annotations

import math
import os
import sys

KINDS = ("fwd_single", "conv_bias_act", "conv_axpy", "dgrad_gate", "dgrad_add", "conv_gate", "wgrad")
TOL = 3e-2  # bfloat16 operands, float accumulation (tests/test_cudnn_fusion_gpu.py uses 2e-2 on its outputs)


def run(kind: str) -> int:
    import torch
    import torch.nn.functional as F

    import contres
    from contres import _C

    assert contres.build_info().get("cudnn_fusion"), contres.build_info()
    torch.backends.cudnn.allow_tf32 = True
    dtype, (B, C, H, W, k) = torch.bfloat16, (4, 16, 12, 12, 3)
    gen = torch.Generator(device="cuda").manual_seed(KINDS.index(kind))

    def randn(shape, scale=1.0, out_dtype=dtype):
        t = (torch.randn(shape, device="cuda", dtype=torch.float64, generator=gen) * scale).to(out_dtype)
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    def conv(x, K, b=None):
        return F.conv2d(x.double(), K.double(), None if b is None else b.double(), padding=k // 2)

    def conv_t(x, K):
        return F.conv_transpose2d(x.double(), K.double(), padding=k // 2)

    def rel(a, ref):
        return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()

    u, K, b = randn((B, C, H, W)), randn((C, C, k, k), 1 / math.sqrt(C * k * k)), randn((C,), 0.3)
    other = randn((B, C, H, W))
    z = conv(u, K, b)
    mask = (z > 0).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    errors = {}
    if kind == "fwd_single":
        u_next, gate = torch.empty_like(u), torch.empty_like(u, dtype=torch.uint8)
        ok = _C._cudnn_forward_single(u, K, b, 0.25, "relu", "mask", u_next, gate)
        errors["u_next"] = rel(u_next, u.double() + 0.25 * torch.relu(z))
        errors["mask bytes differing"] = (gate != mask).double().mean().item()  # bf16 rounding may flip z ~ 0
    elif kind == "conv_bias_act":
        a = torch.empty_like(u)
        ok = _C._cudnn_conv_bias_act(u, K, b, "tanh", a)
        errors["a"] = rel(a, torch.tanh(z))
    elif kind == "conv_axpy":
        y = torch.empty_like(u)
        ok = _C._cudnn_conv_axpy(u, K, other, -0.25, y)
        errors["y"] = rel(y, other.double() - 0.25 * conv(u, K))
    elif kind == "dgrad_gate":
        lam_out, g_out, bias = torch.empty_like(u), torch.empty_like(u), torch.empty(C, device="cuda")
        ok = _C._cudnn_dgrad_gate(u, K, other, mask, "relu", "mask", 0.25, lam_out, g_out, bias)
        lam_ref = conv_t(u, K) + other.double()
        g_ref = 0.25 * mask.double() * lam_ref
        errors.update(lam_out=rel(lam_out, lam_ref), g_out=rel(g_out, g_ref), bias=rel(bias, g_ref.sum((0, 2, 3))))
    elif kind == "dgrad_add":
        lam_out = torch.empty_like(u)
        ok = _C._cudnn_dgrad_add(u, K, other, lam_out, 1.0)
        errors["lam_out"] = rel(lam_out, other.double() + conv_t(u, K))
    elif kind == "conv_gate":
        a = torch.tanh(randn((B, C, H, W)).double()).to(dtype).contiguous(memory_format=torch.channels_last)
        g_out, bias = torch.empty_like(u), torch.empty(C, device="cuda")
        ok = _C._cudnn_conv_gate(u, K, a, "tanh", "value", -0.25, g_out, bias)
        g_ref = -0.25 * (1 - a.double() ** 2) * conv(u, K)
        errors.update(g_out=rel(g_out, g_ref), bias=rel(bias, g_ref.sum((0, 2, 3))))
    else:  # wgrad
        dK = torch.empty(C, C, k, k, device="cuda").contiguous(memory_format=torch.channels_last)
        ok = _C._cudnn_wgrad(u, other, dK)
        ref = torch.nn.grad.conv2d_weight(u.double(), (C, C, k, k), other.double(), padding=k // 2)
        errors["dK"] = rel(dK, ref)
    torch.cuda.synchronize()
    plans = [r for r in _C._cudnn_fusion_built_graphs() if r["key"].split()[2] == kind]  # "cuda:0 sm90 KIND ..."
    plan = plans[-1] if plans else {"plan": "(no plan recorded)", "build_s": 0.0}
    worst = max(v for name, v in errors.items() if name != "mask bytes differing")
    good = bool(ok) and worst <= TOL and errors.get("mask bytes differing", 0) <= 1e-2
    print(f"{kind}: ran={bool(ok)} plan={plan['plan']} build {plan['build_s']:.2f} s; "
          + ", ".join(f"{n} {v:.2e}" for n, v in errors.items()) + ("" if good else "  <-- NOT OK"), flush=True)
    return 0 if good else 1


def main(argv) -> int:
    if len(argv) != 1 or argv[0] not in KINDS + ("all",):
        print(__doc__ + f"\nKINDS: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    kinds = KINDS if argv[0] == "all" else (argv[0],)
    if os.environ.get("GPU_CHECK_DRY_RUN") == "1":
        print(f"would run the fused graph kind(s) {', '.join(kinds)} once each")
        return 0
    return max(run(kind) for kind in kinds)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
