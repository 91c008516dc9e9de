"""Benchmark of the fused ODE block against plain PyTorch: ``python -m contres.bench``.

For every device and case it measures, side by side in one run, the methods

  fused        contres.functional.ode_block(backend="fused")
  fused_ckpt   the same with checkpoint=True (every ceil(sqrt(N))-th state kept, the rest recomputed)
  eager        backend="reference": the pure-PyTorch autograd oracle (the baseline of every ratio)
  compiled     torch.compile (inductor) of the reference function
  torchdiffeq  torchdiffeq.odeint(method="euler") on the fixed grid t_k = k T / N with a piecewise-constant
               weight ODE function (only when torchdiffeq can be imported; otherwise left out silently)
  fused_graphed, eager_graphed
               CUDA only: fused and eager captured in CUDA graphs, forward and backward
               (torch.cuda.make_graphed_callables), as a user with fixed shapes can run them; replay removes the
               host cost of every launch, which bounds small shapes. Their memory lives in the graphs' private
               pool and is not reported.

and reports, per method: the median forward time and forward+backward time (the forward runs with autograd
recording, as in training; the methods are timed in interleaved rounds, so that a slow spell of a shared
machine falls on all of them alike), their speed-up over eager, the activation memory (bytes allocated by the forward
that are still alive when it returns: the output plus everything the graph keeps for the backward), its
ratio to eager, and the largest difference of the output and of the weight gradient from eager, relative to
eager's largest entry (the JSON also has the absolute ones).

Default cases (N = 8 Euler steps, one control per step, float32, 3x3 kernels; single/relu and double_sym/tanh):
CPU B=32, C=32, 32x32; CUDA B=128, C=64, 32x32 and B=32, C=16, 28x28, plus single/relu at B=128, C=64 under
bfloat16 autocast. Shape, layer, dtype and autocast options replace them.

Differences: with relu, a pre-activation within rounding of 0 can land on the other side of the kink in one
method than in eager (the convolutions round differently in another layout or algorithm); each such flip moves
the weight gradient by about h |grad_out| |u|, a relative 1e-2 at the default float32 CPU shape, so a relu dW
difference of that size is rounding, not a bug.

Memory: on CUDA from the caching allocator's counters around the forward; on the CPU by walking the autograd
graph the forward leaves (distinct storages of the saved tensors and the output), because contres serves its
large saved CPU buffers from its own cache, which allocator-based counts (the profiler's memory events, kept
in the JSON as alloc_mem_bytes / peak_mem_bytes) see only on a cache miss.

The case and method builders (Case, make_inputs, build_method, forward_runner, fwd_bwd_runner) are shared
with the pytest-benchmark suite in bench/.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import _ext, functional, reference

METHODS = ("fused", "fused_ckpt", "eager", "compiled", "torchdiffeq", "fused_graphed", "eager_graphed")
GRAPHED = ("fused_graphed", "eager_graphed")
DEFAULT_ACTIVATION = {"single": "relu", "double_sym": "tanh"}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
_SHORT_DTYPE = {"float32": "f32", "float64": "f64", "bfloat16": "bf16"}
MIB = 1024 ** 2

# Default shapes (batch, channels, size) per device; --quick uses the small one everywhere.
DEFAULT_SHAPES = {"cpu": [(32, 32, 32)], "cuda": [(128, 64, 32), (32, 16, 28)]}
QUICK_SHAPE = (8, 16, 16)
DEFAULT_STEPS = 8


# ----------------------------------------------------------------------------------------------------------------
# Cases and inputs

@dataclasses.dataclass(frozen=True)
class Case:
    device: str
    layer: str
    activation: str
    batch: int
    channels: int
    size: int
    steps: int
    controls: Optional[int] = None  # None: one control per step
    dtype: str = "float32"
    autocast: Optional[str] = None  # None, "bfloat16" or "float16"
    T: float = 1.0
    kernel_size: int = 3
    norm: str = "none"
    channels_last: bool = False  # x and the upstream gradient in channels_last (every method sees the same)

    @property
    def n_controls(self) -> int:
        return self.controls or self.steps

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def name(self) -> str:
        kind = f"{self.layer}/{self.activation}" + ("/tv" if self.norm == "tv" else "")
        parts = [kind, f"B{self.batch}", f"C{self.channels}",
                 f"{self.size}x{self.size}", f"N{self.steps}"]
        if self.n_controls != self.steps:
            parts.append(f"M{self.n_controls}")
        parts.append(_SHORT_DTYPE[self.dtype])
        if self.autocast:
            parts.append(f"autocast-{_SHORT_DTYPE.get(self.autocast, 'fp16')}")
        if self.channels_last:
            parts.append("CL")
        return " ".join(parts)

    @property
    def state_bytes(self) -> int:
        """Bytes of one state u (B, C, H, W)."""
        elem = torch.empty((), dtype=self.torch_dtype).element_size()
        return self.batch * self.channels * self.size * self.size * elem

    def autocast_context(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=AUTOCAST[self.autocast])


@dataclasses.dataclass
class Inputs:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    grad_out: torch.Tensor  # the upstream gradient used for every backward

    @property
    def leaves(self):
        return (self.x, self.weight, self.bias)


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """x, controls (scaled like ODEBlock's initialisation) and an upstream gradient, all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    C, k, M = case.channels, case.kernel_size, case.n_controls
    shape = (case.batch, C, case.size, case.size)
    bound = 1.0 / math.sqrt(C * k * k)

    def rand(*size, scale=1.0, uniform=False):
        t = (torch.rand(*size, generator=gen, dtype=torch.float64) * 2 - 1) if uniform else \
            torch.randn(*size, generator=gen, dtype=torch.float64)
        return (scale * t).to(device=case.device, dtype=case.torch_dtype)

    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    x = rand(*shape).contiguous(memory_format=fmt).requires_grad_()
    weight = rand(M, C, C, k, k, scale=bound, uniform=True).requires_grad_()
    bias = rand(M, C, scale=bound, uniform=True).requires_grad_()
    return Inputs(x, weight, bias, rand(*shape).contiguous(memory_format=fmt))


# ----------------------------------------------------------------------------------------------------------------
# Methods: each is a function (x, weight, bias) -> u_N

class MethodSkipped(Exception):
    """The method cannot run for this case; silent=True leaves it out of the table altogether."""

    def __init__(self, reason: str, silent: bool = False):
        super().__init__(reason)
        self.silent = silent


def _ode_block_fn(case: Case, backend: str, checkpoint=False) -> Callable:
    def fn(x, weight, bias):
        return functional.ode_block(x, weight, bias, T=case.T, n_steps=case.steps, layer=case.layer,
                                    activation=case.activation, backend=backend, checkpoint=checkpoint,
                                    norm=case.norm)
    return fn


def _fused_fn(case: Case, checkpoint=False) -> Callable:
    if not _ext.has_kernels(case.device):
        raise MethodSkipped(f"no fused {case.device} kernels in this build")
    return _ode_block_fn(case, "fused", checkpoint)


def _compiled_fn(case: Case) -> Callable:
    def fn(x, weight, bias):
        return reference.ode_block(x, weight, bias, T=case.T, n_steps=case.steps, layer=case.layer,
                                   activation=case.activation, norm=case.norm)
    import torch._dynamo

    torch._dynamo.reset()  # a fresh cache per case: no recompile limits, no stale graphs
    return torch.compile(fn)


def _torchdiffeq_fn(case: Case) -> Callable:
    """odeint(method="euler") on the grid t_k = k T / N; the ODE function picks the control owning t."""
    try:
        import torchdiffeq
    except ImportError as exc:
        raise MethodSkipped(f"torchdiffeq not importable ({exc})", silent=True) from None
    act = reference.activation_fn(case.activation)
    N, M, T, pad = case.steps, case.n_controls, case.T, case.kernel_size // 2
    h = T / N

    def grid(func, y0, t):  # exactly N steps of size T / N (no ceil() round-off in the step count)
        return torch.linspace(0.0, T, N + 1, dtype=t.dtype, device=t.device)

    def fn(x, weight, bias):
        def rhs(t, u):
            k = min(int(round(float(t) / h)), N - 1)  # the step whose start time is t
            j = min(k * M // N, M - 1)  # "constant" interpolation: control j owns [jT/M, (j+1)T/M)
            z = F.conv2d(u, weight[j], bias[j], padding=pad)
            if case.norm == "tv":
                z = reference.tv_norm(z)
            if case.layer == "single":
                return act(z)
            return -F.conv_transpose2d(act(z), weight[j], padding=pad)

        t = torch.tensor([0.0, T], dtype=torch.float64, device=x.device)
        return torchdiffeq.odeint(rhs, x, t, method="euler", options={"grid_constructor": grid})[-1]
    return fn


def _graphed_fn(case: Case, build: Callable[[Case], Callable]) -> Callable:
    """build(case) captured in CUDA graphs, forward and backward; calls copy their inputs into the graphs'."""
    if case.device != "cuda":
        raise MethodSkipped("CUDA graphs need a CUDA device", silent=True)
    if case.autocast is not None:  # capture would need autocast(cache_enabled=False) around every call
        raise MethodSkipped("not measured under autocast")
    return torch.cuda.make_graphed_callables(build(case), make_inputs(case, seed=1).leaves)


_BUILDERS = {
    "fused": lambda case: _fused_fn(case),
    "fused_ckpt": lambda case: _fused_fn(case, checkpoint=True),
    "eager": lambda case: _ode_block_fn(case, "reference"),
    "compiled": _compiled_fn,
    "torchdiffeq": _torchdiffeq_fn,
    "fused_graphed": lambda case: _graphed_fn(case, _fused_fn),
    "eager_graphed": lambda case: _graphed_fn(case, lambda c: _ode_block_fn(c, "reference")),
}


def build_method(name: str, case: Case) -> Callable:
    """The function (x, weight, bias) -> u_N of a method; raises MethodSkipped when it cannot run."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown method {name!r}; choose from {METHODS}")
    return _BUILDERS[name](case)


def forward_runner(fn: Callable, inputs: Inputs, case: Case) -> Callable[[], torch.Tensor]:
    """One training-mode forward (autograd records the graph), under the case's autocast."""
    def run():
        with case.autocast_context():
            return fn(*inputs.leaves)
    return run


def fwd_bwd_runner(fn: Callable, inputs: Inputs, case: Case) -> Callable:
    """One forward + backward; returns (output, (grad_x, grad_weight, grad_bias))."""
    forward = forward_runner(fn, inputs, case)

    def run():
        out = forward()
        return out, torch.autograd.grad(out, inputs.leaves, inputs.grad_out.to(out.dtype))
    return run


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def synced(run: Callable, device: str) -> Callable:
    """run followed by a device synchronisation (for timers that read the host clock)."""
    def wrapped():
        result = run()
        synchronize(device)
        return result
    return wrapped


# ----------------------------------------------------------------------------------------------------------------
# Measurements

MIN_REPEATS = 3
ROUNDS = 3  # timing rounds per case, methods interleaved (see time_interleaved)


def time_samples(run: Callable, device: str, repeats: int, warmup: int, max_s: Optional[float] = None,
                 min_repeats: int = MIN_REPEATS) -> list:
    """Wall times of run() in milliseconds; CUDA events on the GPU, perf_counter on the CPU.

    Times `repeats` calls after `warmup` untimed ones; with max_s, stops early once min_repeats calls are
    timed and max_s seconds have passed (keeps slow CPU cases within the run's time budget).
    """
    for _ in range(warmup):
        run()
    synchronize(device)
    times = []
    deadline = None if max_s is None else time.perf_counter() + max_s
    for _ in range(repeats):
        if deadline is not None and len(times) >= min_repeats and time.perf_counter() > deadline:
            break
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


@contextlib.contextmanager
def _quiet_fd2():
    """Silence file descriptor 2 (libkineto logs profiler_start/stop lines there, past Python's sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def graph_bytes(out: torch.Tensor, inputs: Inputs) -> int:
    """Bytes of the distinct storages the autograd graph of `out` keeps for the backward, plus out's own.

    Walks out.grad_fn and its parents, reading every node's saved tensors (`_saved_*` of built-in nodes,
    `saved_tensors` of custom Functions, torch.compile's included); the inputs' storages are left out.
    Independent of the allocator, so it also counts buffers a library serves from its own cache.
    """
    excluded = {t.untyped_storage().data_ptr() for t in inputs.leaves}
    storages = {}

    def add(value):
        for t in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in excluded:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    add(out)
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_") or name == "saved_tensors":
                try:
                    add(getattr(node, name))
                except RuntimeError:  # already freed (retain_graph=False after a backward)
                    pass
        stack.extend(parent for parent, _ in node.next_functions)
    return sum(storages.values())


def forward_memory_cpu(forward: Callable[[], torch.Tensor], inputs: Inputs) -> dict:
    """Memory of one forward on the CPU.

    act: graph_bytes (what the forward leaves alive: output + saved for backward). The allocator cannot give
    it here: contres serves its large saved CPU buffers from its own cache, which the CPU allocator and the
    profiler only see on a cache miss. alloc / peak: the profiler's allocator events during the forward
    (allocated minus freed, and the running maximum; torch.profiler with profile_memory=True) - equal to act
    for the PyTorch methods, a cross-check that misses cached buffers.
    """
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = forward()
    alloc = peak = 0
    try:
        events = sorted((e for e in prof.profiler.kineto_results.events()
                         if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                        key=lambda e: e.start_ns())
        for e in events:
            alloc += e.nbytes()
            peak = max(peak, alloc)
    except (AttributeError, RuntimeError):  # profiler internals of another torch version: no cross-check
        alloc = peak = None
    graph = graph_bytes(out, inputs)
    return {"act": graph, "graph": graph, "alloc": alloc, "peak": peak}


def forward_memory_cuda(forward: Callable[[], torch.Tensor], inputs: Inputs) -> dict:
    """Memory of one forward on the GPU from the caching allocator's counters (reset around the forward).

    act = alloc: bytes allocated during the forward still allocated after it; peak: the maximum above the
    starting point; graph: graph_bytes, a cross-check.
    """
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = forward()
    torch.cuda.synchronize()
    alloc = torch.cuda.memory_allocated() - base
    peak = torch.cuda.max_memory_allocated() - base
    return {"act": alloc, "graph": graph_bytes(out, inputs), "alloc": alloc, "peak": peak}


def forward_memory(forward: Callable[[], torch.Tensor], inputs: Inputs, device: str) -> dict:
    """{"act", "graph", "alloc", "peak"} bytes of one forward (see the per-device helpers)."""
    if device == "cuda":
        return forward_memory_cuda(forward, inputs)
    return forward_memory_cpu(forward, inputs)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


# ----------------------------------------------------------------------------------------------------------------
# One case

ROW_NUMBERS = ("fwd_ms", "fwd_bwd_ms", "speedup_fwd", "speedup_fwd_bwd", "act_mem_bytes", "act_mem_mib",
               "mem_ratio", "graph_mem_bytes", "alloc_mem_bytes", "peak_mem_bytes", "max_diff_out",
               "max_diff_grad_w", "max_rel_diff_out", "max_rel_diff_grad_w")


def _row(case: Case, method: str, **values) -> dict:
    row = {"device": case.device, "case": case.name, "layer": case.layer, "activation": case.activation,
           "batch": case.batch, "channels": case.channels, "size": case.size, "steps": case.steps,
           "controls": case.n_controls, "dtype": case.dtype, "autocast": case.autocast, "method": method,
           "state_mib": case.state_bytes / MIB}
    row.update({k: None for k in ROW_NUMBERS})
    row["note"] = ""
    row.update(values)
    return row


def _short_error(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:120] if lines else ''}"


@dataclasses.dataclass
class Prepared:
    """A method that ran once for this case: its runners, and its row without times (or a finished row)."""
    name: str
    row: dict
    forward: Optional[Callable] = None
    fwd_bwd: Optional[Callable] = None
    times: dict = dataclasses.field(default_factory=lambda: {"fwd_ms": [], "fwd_bwd_ms": []})


def prepare_method(name: str, case: Case, inputs: Inputs, ref) -> Optional[Prepared]:
    """First call (compiles; differences from eager, ref = (out, grads) of eager) and memory; None if silent skip."""
    try:
        fn = build_method(name, case)
    except MethodSkipped as exc:
        return None if exc.silent else Prepared(name, _row(case, name, note=f"skipped: {exc}"))
    forward, fwd_bwd = forward_runner(fn, inputs, case), fwd_bwd_runner(fn, inputs, case)
    try:
        out, grads = fwd_bwd()  # also the first warm-up (and torch.compile's compilation)
    except Exception as exc:  # noqa: BLE001  (compile failures, missing kernels, dtype gaps: report, go on)
        prefix = "compile failed" if name == "compiled" else "failed"
        return Prepared(name, _row(case, name, note=f"skipped: {prefix}: {_short_error(exc)}"))
    ref_out, ref_grads = ref
    diffs = {"max_diff_out": max_abs_diff(out, ref_out), "max_diff_grad_w": max_abs_diff(grads[1], ref_grads[1])}
    diffs["max_rel_diff_out"] = diffs["max_diff_out"] / max(ref_out.detach().abs().max().item(), 1e-30)
    diffs["max_rel_diff_grad_w"] = diffs["max_diff_grad_w"] / max(ref_grads[1].abs().max().item(), 1e-30)
    del out, grads
    if name in GRAPHED:  # the allocator counters see nothing: the graphs own their memory from capture on
        return Prepared(name, _row(case, name, **diffs), forward, fwd_bwd)
    mem = forward_memory(forward, inputs, case.device)
    return Prepared(name, _row(case, name, act_mem_bytes=mem["act"], act_mem_mib=mem["act"] / MIB,
                               graph_mem_bytes=mem["graph"], alloc_mem_bytes=mem["alloc"],
                               peak_mem_bytes=mem["peak"], **diffs), forward, fwd_bwd)


def time_interleaved(prepared: list, device: str, repeats: int, warmup: int, max_s: Optional[float] = None,
                     rounds: int = ROUNDS) -> None:
    """Times every runnable method in `rounds` rounds; each round gives each method a block of
    ceil(repeats / rounds) calls (after `warmup` untimed ones, which restore its steady state), so a slow
    spell of a shared machine falls on all methods alike instead of on whichever ran then. Fills p.row's
    fwd_ms / fwd_bwd_ms with the medians of all timed calls."""
    runnable = [p for p in prepared if p.forward is not None]
    rounds = max(1, min(rounds, repeats))
    per_round = math.ceil(repeats / rounds)
    block_s = None if max_s is None else max_s / rounds
    min_per_round = math.ceil(MIN_REPEATS / rounds)
    for r in range(rounds):
        for p in runnable:
            for key, run in (("fwd_ms", p.forward), ("fwd_bwd_ms", p.fwd_bwd)):
                p.times[key] += time_samples(run, device, per_round, warmup, block_s, min_per_round)
    for p in runnable:
        for key, samples in p.times.items():
            p.row[key] = statistics.median(samples)


def add_ratios(rows: list) -> None:
    """Speed-ups (eager time / method time) and memory ratios (method / eager) within each case."""
    eager = {r["case"]: r for r in rows if r["method"] == "eager" and r["fwd_ms"] is not None}
    for r in rows:
        e = eager.get(r["case"])
        if e is None or r["fwd_ms"] is None:
            continue
        r["speedup_fwd"] = e["fwd_ms"] / r["fwd_ms"]
        r["speedup_fwd_bwd"] = e["fwd_bwd_ms"] / r["fwd_bwd_ms"]
        has_mem = r["act_mem_bytes"] is not None and e["act_mem_bytes"]
        r["mem_ratio"] = r["act_mem_bytes"] / e["act_mem_bytes"] if has_mem else None


def bench_case(case: Case, methods, repeats: int, warmup: int, max_s: Optional[float] = None,
               progress=None, rounds: int = ROUNDS) -> list:
    """All methods on one case; eager runs once first to give the reference output and gradients."""
    inputs = make_inputs(case)
    ref = fwd_bwd_runner(build_method("eager", case), inputs, case)()
    ref = (ref[0].detach(), tuple(g.detach() for g in ref[1]))
    prepared = []
    for name in methods:
        if progress is not None:
            progress.set_postfix_str(f"{case.device} {case.name} {name}: first call", refresh=True)
        p = prepare_method(name, case, inputs, ref)
        if p is not None:
            prepared.append(p)
    if progress is not None:
        progress.set_postfix_str(f"{case.device} {case.name}: timing {rounds} rounds", refresh=True)
    time_interleaved(prepared, case.device, repeats, warmup, max_s, rounds)
    rows = [p.row for p in prepared]
    add_ratios(rows)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Devices, cases, environment

def available_devices() -> list:
    devices = ["cpu"]
    if torch.cuda.is_available() and _ext.build_info().get("cuda_kernels"):
        devices.append("cuda")
    return devices


def select_devices(choice: Optional[str]) -> list:
    if choice in (None, "all"):
        return available_devices()
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("contres.bench: --device cuda but torch.cuda.is_available() is False")
    return [choice]


def make_cases(device: str, args) -> list:
    """The cases of one device: the defaults of the module docstring unless shapes/layers are given."""
    custom_shape = any(v is not None for v in (args.batch, args.channels, args.size))
    if custom_shape or args.quick:
        b0, c0, s0 = QUICK_SHAPE if args.quick else DEFAULT_SHAPES["cpu"][0]
        shapes = [(args.batch or b0, args.channels or c0, args.size or s0)]
    else:
        shapes = DEFAULT_SHAPES[device]
    layers = reference.LAYERS if args.layer in (None, "all") else (args.layer,)
    steps = args.steps or (4 if args.quick else DEFAULT_STEPS)
    cases = [Case(device, layer, args.activation or DEFAULT_ACTIVATION[layer], b, c, s, steps, args.controls,
                  args.dtype, args.autocast, norm=args.norm, channels_last=args.channels_last)
             for (b, c, s) in shapes for layer in layers]
    is_default = not custom_shape and not args.quick and args.layer is None and args.activation is None \
        and args.steps is None and args.controls is None and args.dtype == "float32" and args.autocast is None \
        and args.norm == "none" and not args.channels_last
    if device == "cuda" and is_default:  # plus bf16 autocast on the large shape
        b, c, s = DEFAULT_SHAPES["cuda"][0]
        cases.append(Case(device, "single", "relu", b, c, s, DEFAULT_STEPS, None, "float32", "bfloat16"))
    return cases


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({torch.get_num_threads()} threads)"


def environment(devices, args) -> dict:
    try:
        import torchdiffeq
        tdq = getattr(torchdiffeq, "__version__", "unknown")
    except ImportError:
        tdq = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
            "platform": platform.platform(), "devices": {d: device_name(d) for d in devices},
            "build_info": _ext.build_info(), "torchdiffeq": tdq, "num_threads": torch.get_num_threads(),
            "args": vars(args)}


# ----------------------------------------------------------------------------------------------------------------
# Output

_COLUMNS = (  # header, key, format
    ("device", "device", "{}"), ("case", "case", "{}"), ("method", "method", "{}"),
    ("fwd ms", "fwd_ms", "{:.2f}"), ("fwd+bwd ms", "fwd_bwd_ms", "{:.2f}"),
    ("x fwd", "speedup_fwd", "{:.2f}"), ("x fwd+bwd", "speedup_fwd_bwd", "{:.2f}"),
    ("act MiB", "act_mem_mib", "{:.1f}"), ("mem ratio", "mem_ratio", "{:.2f}"),
    ("rel diff out", "max_rel_diff_out", "{:.1e}"), ("rel diff dW", "max_rel_diff_grad_w", "{:.1e}"),
)


def format_table(rows: list) -> str:
    """An aligned text table; text left-aligned, numbers right-aligned, notes listed below."""
    header = [h for h, _, _ in _COLUMNS]
    cells = []
    for r in rows:
        cells.append([("-" if r[key] is None else fmt.format(r[key])) for _, key, fmt in _COLUMNS])
    widths = [max(len(row[i]) for row in cells + [header]) for i in range(len(header))]
    n_text = 3

    def line(values):
        return "  ".join(v.ljust(w) if i < n_text else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    out = [line(header), "  ".join("-" * w for w in widths)]
    prev_case = None
    for r, c in zip(rows, cells):
        if prev_case is not None and (r["device"], r["case"]) != prev_case:
            out.append("")
        prev_case = (r["device"], r["case"])
        out.append(line(c))
    notes = [f"  {r['device']} {r['case']} {r['method']}: {r['note']}" for r in rows if r["note"]]
    if notes:
        out += ["", "notes:"] + notes
    out.append("")
    out.append("x = speed-up over eager (eager time / method time); act MiB = memory held after the forward "
               "(output + saved for backward); mem ratio = act / eager act;")
    out.append("rel diff = max |method - eager| / max |eager|.")
    return "\n".join(out)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------------------------
# CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m contres.bench", description=__doc__.split("\n\n")[0],
        epilog="Default cases (N=8, float32, single/relu and double_sym/tanh): cpu B=32 C=32 32x32; cuda B=128 C=64 "
               "32x32 and B=32 C=16 28x28, plus single/relu B=128 C=64 under bf16 autocast.")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                   help="all (default): cpu, and cuda when available with fused CUDA kernels")
    p.add_argument("--batch", type=int, help="batch size (default: the per-device default shapes; cpu: "
                   f"B,C,H = {DEFAULT_SHAPES['cpu'][0]}, cuda: {DEFAULT_SHAPES['cuda']})")
    p.add_argument("--channels", type=int, help="channels C")
    p.add_argument("--size", type=int, help="spatial size H = W")
    p.add_argument("--steps", type=int, help=f"Euler steps N (default {DEFAULT_STEPS})")
    p.add_argument("--controls", type=int, help="controls M (default: N)")
    p.add_argument("--layer", choices=reference.LAYERS + ("all",), help="default: all")
    p.add_argument("--activation", choices=reference.ACTIVATIONS,
                   help="default: relu for single, tanh for double_sym")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="default: float32")
    p.add_argument("--channels-last", action="store_true",
                   help="x and the upstream gradient in channels_last for every method (default: NCHW)")
    p.add_argument("--norm", choices=reference.NORMS, default="none",
                   help="'tv': normalise each pixel's channels inside the blocks (see ODEBlock; default: none)")
    p.add_argument("--autocast", choices=tuple(AUTOCAST), help="run the forwards under torch.autocast (float32 "
                   "inputs); the default CUDA run adds a bfloat16 autocast case")
    p.add_argument("--repeats", type=int, default=10, help="timed repetitions, median reported (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions before timing, after the first "
                   "call, which checks the results and compiles (default: %(default)s)")
    p.add_argument("--max-time", type=float, default=1.0, help=f"seconds per measurement after which timing stops "
                   f"once {MIN_REPEATS} repeats are done; 0: always --repeats (default: %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--json", metavar="PATH", help="write all rows and the environment to this JSON file")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: shape B,C,H={QUICK_SHAPE}, N=4, 3 repeats (explicit options win)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        p.error(f"--methods: unknown {bad}; choose from {','.join(METHODS)}")
    args.methods = methods
    if args.autocast is not None:
        args.autocast = {"bf16": "bfloat16", "fp16": "float16"}.get(args.autocast, args.autocast)
        if args.dtype != "float32":
            p.error("--autocast needs --dtype float32 inputs")
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


def run(args) -> tuple[list, dict]:
    """Benchmark every (device, case, method); returns (rows, environment)."""
    from tqdm import tqdm

    devices = select_devices(args.device)
    load_start = _warn_if_busy()
    cases = [case for device in devices for case in make_cases(device, args)]
    rows = []
    with tqdm(total=len(cases), desc="contres.bench", unit="case", file=sys.stderr, leave=False,
              disable=args.no_progress, dynamic_ncols=True) as progress:
        for case in cases:
            rows += bench_case(case, args.methods, args.repeats, args.warmup, args.max_time or None, progress)
            progress.update(1)
    env = environment(devices, args)
    env["loadavg_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    return rows, env


def _warn_if_busy() -> float:
    """The 1-minute load average; warns when other processes already keep a core busy (noisy CPU timings)."""
    load = os.getloadavg()[0]
    if load >= 1.0:
        print(f"contres.bench: warning: load average {load:.1f} on {os.cpu_count()} cores before the run; "
              "other processes compete for the CPU and CPU timings will be noisy", file=sys.stderr)
    return load


def main(argv=None) -> list:
    args = parse_args(argv)
    start = time.perf_counter()
    rows, env = run(args)
    env["wall_s"] = time.perf_counter() - start
    from contres import __version__

    print(f"contres {__version__}, torch {env['torch_version']}, "
          + "; ".join(f"{d}: {name}" for d, name in env["devices"].items()))
    print(format_table(rows))
    print(f"wall time {env['wall_s']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(_json_safe({"environment": env, "rows": rows}), f, indent=2)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
