"""The own CPU convolution (contres.set_cpu_paths(conv="own")) against ATen's channels_last one (oneDNN), op by op:
forward, data gradient (convT) and weight gradient, float32, at C16, C32, C64 (B32, 32x32) and the ported
right-hand sides' shapes. The gate of issue 24: "auto" takes the own convolution only where it is measured faster.

    python bench/cpu_conv.py [--threads N] [--repeats R] [--json PATH]

Each op of both implementations is timed in interleaved rounds (the median of each); ratio = ATen time / own time
(above 1: the own one is faster). The CPU and its ISA are printed with the table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import contres
from contres.bench.environment import bf16_support, cpu_info

SHAPES = [(32, 16, 32), (32, 32, 32), (32, 64, 32), (128, 64, 7), (32, 64, 16)]  # B, C, H = W


def _timed(fn, repeats):
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def ops(B, C, H, k=3):
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(B, C, H, H, generator=g).contiguous(memory_format=cl)
    dy = torch.randn(B, C, H, H, generator=g).contiguous(memory_format=cl)
    K = torch.randn(C, C, k, k, generator=g) * (1.0 / (C * k * k) ** 0.5)
    b = torch.randn(C, generator=g)
    pad = k // 2
    own = contres._ext._C._own_conv
    return {
        "forward": (lambda: torch.conv2d(x, K, b, padding=pad), lambda: own("forward", x, b, K)),
        "data grad": (lambda: torch.conv_transpose2d(dy, K, padding=pad), lambda: own("transpose", dy, None, K)),
        "weight grad": (lambda: torch.ops.aten.convolution_backward(dy, x, K, None, [1, 1], [pad, pad], [1, 1], False,
                                                                    [0, 0], 1, [False, True, False])[1],
                        lambda: own("weight_grad", dy, x, K)),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = cpu_info()
    print(f"CPU: {info['model']} ({args.threads} threads; {bf16_support(info)}); torch {torch.__version__}")
    rows = []
    print(f"{'shape':18s} {'op':12s} {'aten ms':>8s} {'own ms':>8s} {'ratio':>6s} {'rel diff':>9s}")
    for B, C, H in SHAPES:
        for name, (aten, own) in ops(B, C, H).items():
            ref, got = aten(), own()
            diff = ((got - ref).norm() / ref.norm()).item()
            times = {"aten": [], "own": []}
            for _ in range(args.rounds):  # interleaved: both see the same load
                times["aten"].append(_timed(aten, args.repeats))
                times["own"].append(_timed(own, args.repeats))
            ta, to = statistics.median(times["aten"]), statistics.median(times["own"])
            rows.append(dict(B=B, C=C, H=H, op=name, aten_ms=ta, own_ms=to, ratio=ta / to, rel_l2_diff=diff))
            print(f"{f'B{B} C{C} {H}x{H}':18s} {name:12s} {ta:8.2f} {to:8.2f} {ta / to:6.2f} {diff:9.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": info, "threads": args.threads, "torch": torch.__version__, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
