"""The command line: python -m contres.bench [options]. See the package docstring, or --help."""
from __future__ import annotations

import argparse
import os
import sys
import time

from .. import reference
from . import environment, malloc, memory, report
from .cases import (AUTOCAST, DEFAULT_SHAPES, DEFAULT_STEPS, DTYPES, LAYER_NAMES, PORTED_SHAPES, QUICK_SHAPE,
                    QUICK_STEPS, SEED_RKNET_STEPS, make_cases)
from . import methods
from .methods import METHODS
from .suite import bench_case
from .timing import MIN_REPEATS


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m contres.bench", description="Benchmark of the fused ODE block against plain PyTorch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Default cases (N={DEFAULT_STEPS}, float32, single/relu and double_sym/tanh): cpu B,C,H = "
               f"{DEFAULT_SHAPES['cpu'][0]}, plus both layers under bf16 autocast and with mkldnn's bf16 fp32 "
               f"precision on CPUs with native bf16 (avx512_bf16 or AMX), plus the ported right-hand sides: "
               f"torchdiffeq's ODE function (euler, one control) at {PORTED_SHAPES['torchdiffeq']} and the seed "
               f"authors' RKNet block (rk4, N={SEED_RKNET_STEPS}, linear controls) at "
               f"{PORTED_SHAPES['seed_double_sym']};\ncuda {DEFAULT_SHAPES['cuda']}, plus "
               f"single/relu on the first under bf16 autocast.\n\nMethods:\n{methods.__doc__.split(chr(10), 2)[2]}")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                   help="all (default): cpu, and cuda when available with fused CUDA kernels")
    p.add_argument("--method", choices=reference.METHODS + ("all",), default="euler",
                   help="the integrator of every case (default: euler); all: a case of each")
    p.add_argument("--batch", type=int, help="batch size B (default: the per-device default shapes)")
    p.add_argument("--channels", type=int, help="channels C")
    p.add_argument("--size", type=int, help="spatial size H = W")
    p.add_argument("--steps", type=int, help=f"steps N (default {DEFAULT_STEPS})")
    p.add_argument("--controls", type=int, help="controls M (default: N)")
    p.add_argument("--interp", choices=reference.INTERPS, default="constant",
                   help="interpolation of the controls (default: constant)")
    p.add_argument("--layer", choices=LAYER_NAMES + ("all",),
                   help="a preset, or a ported right-hand side (torchdiffeq, seed_double_sym; README, 'Porting a "
                        "model'); default: all presets")
    p.add_argument("--activation", choices=reference.ACTIVATIONS,
                   help="default: relu for single, tanh for double_sym")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="default: float32")
    p.add_argument("--channels-last", action="store_true",
                   help="x and the upstream gradient in channels_last for every method (default: NCHW)")
    p.add_argument("--norm", choices=reference.NORMS, default="none",
                   help="'tv': normalise each pixel's channels inside the blocks (see ODEBlock; default: none)")
    p.add_argument("--autocast", choices=tuple(AUTOCAST),
                   help="run every method under torch.autocast (float32 inputs): eager and compiled cast per op, "
                        "fused keeps the float32 state as they do (CPU; CUDA casts the whole block); the "
                        "*_blockcast rows and fused_reduced run the whole block in the autocast dtype")
    p.add_argument("--mkldnn-fp32-precision", choices=("bf16", "tf32"),
                   help="torch.backends.mkldnn.conv.fp32_precision for every method (CPU, float32): float32 "
                        "convolutions with bf16 (or tf32) math where the CPU has it natively (the default CPU run "
                        "adds 'bf16' on such CPUs); ignored by oneDNN on CPUs without it")
    p.add_argument("--malloc", choices=tuple(malloc.SETTINGS) + ("both",),
                   help="glibc allocator setting of the CPU cases (default: this process's environment); "
                        "'no-page-faults' runs them in a child process with MALLOC_MMAP_THRESHOLD_ and "
                        "MALLOC_TRIM_THRESHOLD_ set; 'both': a table for each")
    p.add_argument("--repeats", type=int, default=10, help="timed repetitions, median reported (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions before timing, after the first "
                   "call, which checks the results and compiles (default: %(default)s)")
    p.add_argument("--max-time", type=float, default=1.0, help=f"seconds per measurement after which timing stops "
                   f"once {MIN_REPEATS} repeats are done; 0: always --repeats (default: %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--json", metavar="PATH", help="write all rows and the environment to this JSON file")
    p.add_argument("--plot", metavar="PATH", help="draw the speed-ups and memory ratios into this PNG "
                   "(needs matplotlib)")
    p.add_argument("--quick", action="store_true", help=f"smoke run: shape B,C,H={QUICK_SHAPE}, N={QUICK_STEPS}, "
                   "3 repeats (explicit options win)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        p.error(f"--methods: unknown {bad}; choose from {','.join(METHODS)}")
    args.methods = names
    if args.autocast is not None:
        args.autocast = {"bf16": "bfloat16", "fp16": "float16"}.get(args.autocast, args.autocast)
        if args.dtype != "float32":
            p.error("--autocast needs --dtype float32 inputs")
    if args.mkldnn_fp32_precision is not None and (args.dtype != "float32" or args.autocast is not None):
        p.error("--mkldnn-fp32-precision applies to float32 convolutions: --dtype float32 without --autocast")
    if args.quick:
        explicit = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        if "--repeats" not in explicit:
            args.repeats = 3
    for name in ("batch", "channels", "size", "steps", "controls", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0 or args.max_time < 0:
        p.error("--warmup and --max-time must be >= 0")
    return args


def _cases_here(device: str, args, setting: str) -> list:
    """Rows of one device's cases run in this process under allocator `setting`."""
    from tqdm import tqdm

    cases = make_cases(device, args)
    rows = []
    with tqdm(total=len(cases), desc=f"contres.bench {device}", unit="case", file=sys.stderr, leave=False,
              disable=args.no_progress, dynamic_ncols=True) as progress:
        for case in cases:
            rows += bench_case(case, args.methods, args.repeats, args.warmup, args.max_time or None,
                               malloc=setting, progress=progress)
            progress.update(1)
    return rows


def run(args) -> tuple:
    """Benchmark every (device, case, method); returns (rows, environment). The CPU cases run once per allocator
    setting of --malloc, those that differ from this process's in a child process."""
    devices = environment.select_devices(args.device)
    load_start = _warn_if_busy()
    pool_start = memory.cpu_pool_stats()
    here = malloc.current()
    rows = []
    for device in devices:
        for setting in (malloc.requested(args.malloc) if device == "cpu" else [here]):
            if setting == here:
                rows += _cases_here(device, args, setting)
            else:
                rows += malloc.run_in_child(setting, argparse.Namespace(**dict(vars(args), device=device)))
    env = environment.environment(devices, args)
    env["loadavg_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    env["malloc"] = {"this_process": here, "settings": malloc.SETTINGS}
    env["cpu_pool"] = {"start": pool_start, "end": memory.cpu_pool_stats()}
    return rows, env


def _warn_if_busy() -> float:
    """The 1-minute load average; warns when other processes already keep a core busy (noisy CPU timings)."""
    load = os.getloadavg()[0]
    if load >= 1.0:
        print(f"contres.bench: warning: load average {load:.1f} on {os.cpu_count()} cores before the run; "
              "other processes compete for the CPU and CPU timings will be noisy", file=sys.stderr)
    return load


def print_tables(rows: list) -> None:
    """One table per allocator setting, labelled when there is more than one or it is not glibc's default."""
    settings = list(dict.fromkeys(r["malloc"] for r in rows))
    for setting in settings:
        if len(settings) > 1 or setting not in ("default", None):
            variables = " ".join(f"{k}={v}" for k, v in malloc.SETTINGS.get(setting, {}).items())
            print(f"\nmalloc: {setting}" + (f" ({variables})" if variables else ""))
        print(report.format_table([r for r in rows if r["malloc"] == setting]))
    print("\n" + report.LEGEND)


def main(argv=None) -> list:
    args = parse_args(argv)
    start = time.perf_counter()
    rows, env = run(args)
    env["wall_s"] = time.perf_counter() - start
    print(f"contres {env['contres_version']} ({env['commit'] or 'commit unknown'}), torch {env['torch_version']}, "
          + "; ".join(f"{d}: {name}" for d, name in env["devices"].items()))
    print_tables(rows)
    print(f"wall time {env['wall_s']:.1f} s")
    if args.json:
        report.write_json(args.json, rows, env)
        print(f"wrote {args.json}")
    if args.plot:
        from . import plot

        plot.plot_rows(rows, env, args.plot)
        print(f"wrote {args.plot}")
    return rows
