"""Benchmark of the fused ODE block against plain PyTorch: ``python -m contres.bench``.

For every device and case it measures, side by side in one run, the methods of contres.bench.methods (fused,
fused_ckpt, eager, compiled, torchdiffeq, ...; `eager` is the baseline of every ratio) and reports, per method:
the median forward time and forward+backward time (the forward runs with autograd recording, as in training; the
methods are timed in interleaved rounds, so that a slow spell of a shared machine falls on all of them alike), their
speed-up over eager, the activation memory (what the forward saves for the backward, plus the output: see
contres.bench.memory) and its ratio to eager, which implementation ran, and the largest difference of the output
and of the weight gradient from eager, relative to eager's largest entry (the JSON also has the absolute ones).

Differences: with relu, a pre-activation within rounding of 0 can land on the other side of the kink in one
method than in eager (the convolutions round differently in another layout or algorithm); each such flip moves
the weight gradient by about h |grad_out| |u|, a relative 1e-2 at the default float32 CPU shape, so a relu dW
difference of that size is rounding, not a bug.

Modules: cases (what is measured, and its inputs), methods (the registry), timing, memory, suite (one case, all
methods), malloc (glibc settings of the CPU cases), environment, report (table, JSON), plot, cli. The pytest-benchmark
suite in bench/ builds its cases and methods with the same functions.
"""
from .cases import Case, Inputs, make_cases, make_inputs
from .cli import main, parse_args, run
from .environment import available_devices
from .memory import forward_memory, saved_bytes
from .methods import METHODS, MethodSkipped, build_method, forward_runner, fwd_bwd_runner
from .suite import ROW_NUMBERS, bench_case, prepare_method
from .timing import synced

__all__ = ["Case", "Inputs", "make_cases", "make_inputs", "main", "parse_args", "run", "available_devices",
           "forward_memory", "saved_bytes", "METHODS", "MethodSkipped", "build_method", "forward_runner",
           "fwd_bwd_runner", "ROW_NUMBERS", "bench_case", "prepare_method", "synced"]
