"""Process memory (RSS) of two workloads, each case in a fresh child process: ``python -m contres.bench.rss``.

inference  One warm forward under torch.inference_mode() per method and n_steps, fused against the reference:
           the peak RSS of the forwards above the RSS before them (inputs and libraries loaded), in MiB and in
           units of |u| (one state). A fused forward that no backward follows keeps nothing (contres.functional),
           so its peak does not grow with n_steps.
batches    Training over changing batch sizes (an ODEBlock C32 32x32 N8, SGD; by default the 32 batch sizes
           2, 4, ..., 64 in a fixed shuffled order, two passes, 64 iterations), fused against eager (the
           reference under autograd): peak RSS, RSS at the end, time, and the CPU pool's counters. The workload of
           the CPU pool's policy (csrc/cpu/buffer_pool.h).

Each case runs in its own process so that one case's heap does not lend memory to the next; glibc's allocator
settings (--malloc, as in contres.bench) apply to that process. RSS is read from /proc (Linux).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

from .._subprocess import child_env, python_command
from . import malloc

MIB = 1 << 20


# ------------------------------------------------------------------------------------------ in the child process

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    """The resident set size now."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """The largest resident set size since the process started (or the last reset_peak_rss())."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Resets the peak to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def inference_case(method: str, backend: str, n_steps: int, batch: int, channels: int, size: int,
                   layer: str = "single", activation: str = "relu", norm: str = "none", dtype: str = "float32",
                   threads: int = 0, warmup: bool = False) -> dict:
    """Peak RSS of forwards under inference_mode above the RSS before them: a cold and a warm one, or (warmup) one
    warm forward after an unmeasured one (where glibc returns freed blocks, as with a small
    MALLOC_MMAP_THRESHOLD_; else the warm forward reuses what the first left in the heap)."""
    import torch

    from .. import functional

    if threads:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=g).to(dt)
    w = (0.1 * torch.randn(n_steps, channels, channels, 3, 3, generator=g) / channels ** 0.5).to(dt)
    b = (0.1 * torch.randn(n_steps, channels, generator=g)).to(dt)
    kw = dict(T=1.0, n_steps=n_steps, layer=layer, activation=activation, interp="constant", norm=norm,
              method=method, backend=backend)
    u_bytes = x.numel() * x.element_size()
    with torch.inference_mode():
        if warmup:
            functional.ode_block(x, w, b, **kw)
        base = rss_bytes()
        reset_peak_rss()
        start = time.perf_counter()
        for _ in range(1 if warmup else 2):
            y = functional.ode_block(x, w, b, **kw)
            del y
        seconds = (time.perf_counter() - start) / (1 if warmup else 2)
    peak = peak_rss_bytes() - base
    return {"method": method, "backend": backend, "n_steps": n_steps, "u_bytes": u_bytes, "peak_bytes": peak,
            "peak_u": peak / u_bytes, "seconds": seconds}


def inference_cases(cases: list, threads: int = 0) -> dict:
    """inference_case of each case (keyword dicts) in this process, each warm; peak_reset says whether the kernel
    reset the peak between them (else the peaks are meaningless)."""
    reset = reset_peak_rss()
    return {"peak_reset": reset, "rows": [inference_case(**c, threads=threads, warmup=True) for c in cases]}


def batch_sizes(n_sizes: int = 32, step: int = 2, seed: int = 0) -> list:
    """The batch sizes step, 2 step, ..., n_sizes step in a fixed shuffled order."""
    sizes = [step * (i + 1) for i in range(n_sizes)]
    random.Random(seed).shuffle(sizes)
    return sizes


def batches_case(backend: str, sizes: list, passes: int = 2, channels: int = 32, size: int = 32, n_steps: int = 8,
                 threads: int = 0) -> dict:
    """Training over the batch sizes `sizes`, `passes` times: RSS after each iteration, peak, time."""
    import torch

    from .. import ODEBlock, pool

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    block = ODEBlock(channels, n_steps=n_steps, backend=backend)
    opt = torch.optim.SGD(block.parameters(), lr=1e-3)
    pool.reset_cpu_pool_counters()
    base = rss_bytes()
    reset_peak_rss()
    rss, start = [], time.perf_counter()
    for _ in range(passes):
        for batch in sizes:
            x = torch.randn(batch, channels, size, size)
            opt.zero_grad()
            block(x).square().mean().backward()
            opt.step()
            del x
            rss.append(rss_bytes())
    seconds = time.perf_counter() - start
    return {"backend": backend, "base_bytes": base, "peak_bytes": peak_rss_bytes(), "end_bytes": rss[-1],
            "rss_bytes": rss, "seconds": seconds, "pool": pool.cpu_pool_stats()}


# ------------------------------------------------------------------------------------------ in the parent process

def run_case(function: str, kwargs: dict, setting: str = "default", env: dict | None = None) -> dict:
    """One case in a fresh child process under glibc setting `setting` (malloc.SETTINGS); returns its dict."""
    base = {k: v for k, v in os.environ.items() if k not in malloc.SETTINGS["no-page-faults"]}
    child = child_env(env=dict(base, **(env or {})))
    child.update(malloc.SETTINGS[setting])
    code = (f"import json\nfrom contres.bench import rss\n"
            f"print('RESULT ' + json.dumps(rss.{function}(**json.loads({json.dumps(kwargs)!r}))))\n")
    proc = subprocess.run(python_command(code=code), env=child, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"contres.bench.rss: the child process of {function}({kwargs}) failed "
                           f"({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]), malloc=setting)


def inference_table(args) -> list:
    rows = []
    for method in args.methods:
        for n_steps in args.steps:
            peaks = {}
            for backend in ("reference", "fused"):
                r = run_case("inference_case", dict(method=method, backend=backend, n_steps=n_steps,
                                                    batch=args.batch, channels=args.channels, size=args.size,
                                                    layer=args.layer, activation=args.activation,
                                                    threads=args.threads), args.malloc[0])
                peaks[backend] = r
                rows.append(r)
            f, ref = peaks["fused"], peaks["reference"]
            print(f"{method:9s} N{n_steps:<4d} peak above start: reference {ref['peak_bytes'] / MIB:7.1f} MiB "
                  f"({ref['peak_u']:5.1f} |u|), fused {f['peak_bytes'] / MIB:7.1f} MiB ({f['peak_u']:5.1f} |u|): "
                  f"fused - reference {f['peak_u'] - ref['peak_u']:+5.1f} |u|; forward {ref['seconds'] * 1e3:.0f} / "
                  f"{f['seconds'] * 1e3:.0f} ms", flush=True)
    return rows


def batches_table(args) -> list:
    sizes = batch_sizes(args.sizes, args.size_step)
    rows = []
    for setting in args.malloc:
        for backend in ("reference", "fused"):
            r = run_case("batches_case", dict(backend=backend, sizes=sizes, passes=args.passes,
                                              channels=args.channels, size=args.size, n_steps=args.steps[0],
                                              threads=args.threads), setting)
            rows.append(r)
            p = r["pool"]
            name = "eager" if backend == "reference" else "fused"
            print(f"{setting:14s} {name:5s}: peak {r['peak_bytes'] / MIB:7.1f} MiB, end {r['end_bytes'] / MIB:7.1f} "
                  f"MiB, {r['seconds']:6.1f} s; pool: hits {p['hits']}, misses {p['misses']}, evictions "
                  f"{p['evictions']}, idle at the end {p['cached_bytes'] / MIB:.1f} MiB", flush=True)
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m contres.bench.rss", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("workload", choices=("inference", "batches"))
    p.add_argument("--methods", default="euler,rk4,leapfrog", help="inference: comma-separated integrators")
    p.add_argument("--steps", default=None, help="n_steps, comma-separated (inference default: 2,16,64; "
                   "batches: 8)")
    p.add_argument("--batch", type=int, default=64, help="inference: batch size (default: %(default)s)")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--size", type=int, default=32, help="H = W (default: %(default)s)")
    p.add_argument("--layer", default="single")
    p.add_argument("--activation", default="relu")
    p.add_argument("--sizes", type=int, default=32, help="batches: how many batch sizes (default: %(default)s)")
    p.add_argument("--size-step", type=int, default=2, help="batches: the sizes are multiples of this (default: "
                   "%(default)s)")
    p.add_argument("--passes", type=int, default=2, help="batches: passes over the sizes (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the child (default: torch's)")
    p.add_argument("--malloc", choices=tuple(malloc.SETTINGS) + ("both",), default="default",
                   help="glibc setting of the children (batches may take 'both')")
    p.add_argument("--json", metavar="PATH", help="write the rows to this JSON file")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    default_steps = "2,16,64" if args.workload == "inference" else "8"
    args.steps = [int(s) for s in (args.steps or default_steps).split(",")]
    args.malloc = list(malloc.SETTINGS) if args.malloc == "both" else [args.malloc]
    return args


def main(argv=None) -> list:
    args = parse_args(argv)
    if not os.path.exists("/proc/self/status"):
        raise SystemExit("contres.bench.rss reads /proc/self/status (Linux)")
    rows = inference_table(args) if args.workload == "inference" else batches_table(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workload": args.workload, "args": {k: v for k, v in vars(args).items() if k != "json"},
                       "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
