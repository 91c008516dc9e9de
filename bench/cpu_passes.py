"""Per-element time of contres' CPU passes in each precision: ``python bench/cpu_passes.py [--json PATH]``.

Times each elementwise pass alone (the private ops contres::_forward_pass, _gate_pass, _tv_forward_pass,
_tv_gate_pass; csrc/pass_ops.cpp) on warm buffers of one state (default B32 C32 32x32, 1M elements), with the
operands an Euler step of single/relu gives it (forward: z, x0 -> out and the mask; gate: lam, mu and the mask
-> g, the running sum and the bias gradient; tv: tanh), in float32, whole bf16 / fp16, and mixed precision
(float32 state, bf16 / fp16 convolution operands: the forward also writes out_low, the next convolution's
input). Precisions run interleaved in rounds (a slow spell of a shared machine falls on all of them alike); each
figure is the median over rounds of the mean of `--repeats` calls. "x f32" is float32's ns per element over the
precision's: > 1 means faster per element than its float32 twin.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import contres  # noqa: F401  (registers torch.ops.contres.*)
from contres.bench.environment import bf16_support, cpu_info

PRECISIONS = {  # name: (state dtype S, convolution dtype L)
    "float32": (torch.float32, torch.float32), "bf16": (torch.bfloat16, torch.bfloat16),
    "fp16": (torch.float16, torch.float16), "mixed-bf16": (torch.float32, torch.bfloat16),
    "mixed-fp16": (torch.float32, torch.float16),
}
PASSES = ("forward", "gate", "tv_forward", "tv_gate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--numel", type=int, default=32 * 32 * 32 * 32, help="elements per operand (default: 1M)")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20, help="calls per timing (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    args.precisions = args.precisions.split(",")
    return args


def make_calls(S, L, n, C):
    """The four passes with the operands of an Euler step, as zero-argument calls on fixed buffers."""
    g = torch.Generator().manual_seed(0)

    def t(dtype):
        return torch.randn(n, generator=g).to(dtype)
    mixed = S != L
    z, x0, out = t(L), t(S), t(S)
    out_low = t(L) if mixed else None
    mask = torch.zeros((n + 7) // 8, dtype=torch.uint8)
    lam, mu, gbuf, sum_out, bias = t(S), t(L), t(L), t(S), torch.zeros(C, dtype=S)
    a_out, keep = t(L), t(L)
    ops = torch.ops.contres
    return {
        "forward": lambda: ops._forward_pass(z, "relu", "mask", mask, out, x0, None, 1.0, 0.0, 0.1, out_low, None,
                                             None, 0.0),
        "gate": lambda: ops._gate_pass(lam, mu, 1.0, mask, "relu", "mask", 0.1, gbuf, None, sum_out, bias, C),
        "tv_forward": lambda: ops._tv_forward_pass(z, C, "tanh", out, x0, None, 1.0, 0.0, 0.1, out_low, None, None,
                                                   0.0, None, keep),
        "tv_gate": lambda: ops._tv_gate_pass(lam, mu, 1.0, z, C, "tanh", 0.1, gbuf, None, sum_out, a_out),
    }


def time_call(call, repeats):
    call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


def main(argv=None):
    args = parse_args(argv)
    info = cpu_info()
    setting = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    print(f"{info['model']} ({torch.get_num_threads()} threads; {bf16_support(info)}), torch {torch.__version__}; "
          f"{args.numel} elements, C={args.channels}; MALLOC_MMAP_THRESHOLD_={setting or 'unset'}")
    calls = {p: make_calls(*PRECISIONS[p], args.numel, args.channels) for p in args.precisions}
    samples = {(p, name): [] for p in args.precisions for name in PASSES}
    for _ in range(args.rounds):
        for name in PASSES:
            for p in args.precisions:
                samples[p, name].append(time_call(calls[p][name], args.repeats))
    ns = {key: statistics.median(v) * 1e9 / args.numel for key, v in samples.items()}
    print(f"\n{'pass':<12}" + "".join(f"{p:>22}" for p in args.precisions))
    for name in PASSES:
        cells = []
        for p in args.precisions:
            base = ns.get(("float32", name))
            ratio = f" ({base / ns[p, name]:.2f}x)" if base else ""
            cells.append(f"{ns[p, name]:.3f} ns{ratio}")
        print(f"{name:<12}" + "".join(f"{c:>22}" for c in cells))
    print("\nns per element (x: float32's time / this one's; > 1: faster per element than the float32 twin)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": info, "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "malloc_mmap_threshold": setting, "args": vars(args),
                       "ns_per_element": {f"{p}/{name}": v for (p, name), v in ns.items()}}, f, indent=2)
    return ns


if __name__ == "__main__":
    main()
