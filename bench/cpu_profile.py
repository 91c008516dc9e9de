"""Where the time of one forward + backward goes on the CPU: ``python bench/cpu_profile.py [--autocast bf16]``.

Runs each method (default: fused, fused_reduced, eager of contres.bench.methods) on the benchmark's inputs (NCHW
float32, B32 C32 32x32 N8, single/relu and double_sym/tanh) under torch.profiler and sorts every op's self time
into categories: the convolutions (forward, data and weight gradient, transposed), contres' own passes (the named
ranges of csrc/driver/stages.cpp) and the rest of its op bodies, casts and copies, ATen's elementwise ops, and
the rest. Times are per call, the median over --rounds profiled calls with the methods interleaved. The oneDNN
kernels behind each convolution are printed with ONEDNN_VERBOSE=1 (not done here).
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from contres import bench
from contres.bench.environment import bf16_support, cpu_info

CATEGORIES = ("conv forward", "conv data+weight grad", "conv transpose", "contres passes", "contres op body",
              "casts and copies", "elementwise", "other")
PASS_RANGES = ("contres::forward_pass", "contres::gate_pass", "contres::tv_forward_pass", "contres::tv_gate_pass")
CASTS = ("copy_", "_to_copy", "aten::to", "contiguous", "clone")
ELEMENTWISE = ("add", "mul", "sub", "neg", "relu", "threshold", "tanh", "sigmoid", "clamp", "where", "div", "rsqrt",
               "square", "pow", "leaky", "sum", "fill_", "zero_")


def category(name: str) -> str:
    """The category of an op's self time (self times, so nothing counts twice)."""
    if name in PASS_RANGES:
        return "contres passes"
    if name.startswith("contres::"):
        return "contres op body"
    if "conv" in name:
        if "backward" in name:
            return "conv data+weight grad"
        return "conv transpose" if "transpose" in name else "conv forward"
    if any(k in name for k in CASTS):
        return "casts and copies"
    if any(k in name for k in ELEMENTWISE):
        return "elementwise"
    return "other"


def profile_call(run):
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    by_cat, by_op = collections.Counter(), collections.Counter()
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / 1e3
        by_cat[category(e.key)] += ms
        by_op[e.key] += ms
    return by_cat, by_op


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--autocast", choices=("bf16", "fp16"), default="bf16", help="default: %(default)s")
    p.add_argument("--no-autocast", action="store_true", help="float32 (with --mkldnn-fp32-precision if given)")
    p.add_argument("--mkldnn-fp32-precision", choices=("bf16", "tf32"))
    p.add_argument("--layers", default="single,double_sym")
    p.add_argument("--methods", default="fused,fused_reduced,eager")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--top", type=int, default=8, help="ops listed per method (default: %(default)s)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    info = cpu_info()
    autocast = None if args.no_autocast else {"bf16": "bfloat16", "fp16": "float16"}[args.autocast]
    print(f"{info['model']} ({torch.get_num_threads()} threads; {bf16_support(info)}), torch {torch.__version__}; "
          f"autocast {autocast}, mkldnn fp32 precision {args.mkldnn_fp32_precision}")
    report = {}
    for layer in args.layers.split(","):
        case = bench.Case("cpu", layer, bench.cases.DEFAULT_ACTIVATION[layer], args.batch, args.channels, args.size,
                          args.steps, autocast=autocast, mkldnn_fp32_precision=args.mkldnn_fp32_precision)
        inputs = bench.make_inputs(case)
        runs = {}
        for name in args.methods.split(","):
            try:
                runs[name] = bench.fwd_bwd_runner(bench.build_method(name, case), inputs, case)
            except bench.MethodSkipped as exc:
                print(f"{case.name} {name}: skipped ({exc})")
        samples = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                samples[name].append(profile_call(run))
        print(f"\n{case.name}")
        cats = list(CATEGORIES)
        print(f"{'method':<16}" + "".join(f"{c:>23}" for c in cats) + f"{'total':>11}")
        report[case.name] = {}
        for name, s in samples.items():
            med = {c: statistics.median(r[0][c] for r in s) for c in cats}
            total = statistics.median(sum(r[0].values()) for r in s)
            report[case.name][name] = {"categories_ms": med, "total_ms": total,
                                       "top_ops_ms": dict(s[-1][1].most_common(args.top))}
            print(f"{name:<16}" + "".join(f"{med[c]:>20.1f} ms" for c in cats) + f"{total:>8.1f} ms")
        for name, s in samples.items():
            print(f"  {name}: " + ", ".join(f"{op} {ms:.1f}" for op, ms in s[-1][1].most_common(args.top)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": info, "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "args": vars(args), "report": report}, f, indent=2)


if __name__ == "__main__":
    main()
