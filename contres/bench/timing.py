"""Timing: wall times of calls (CUDA events on the GPU, perf_counter on the CPU), methods in interleaved rounds."""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Optional

import torch

MIN_REPEATS = 3
ROUNDS = 3  # timing rounds per case, methods interleaved (see time_interleaved)


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


def time_interleaved(runners: list, device: str, repeats: int, warmup: int, max_s: Optional[float] = None,
                     rounds: int = ROUNDS) -> list:
    """Median times {"fwd_ms", "fwd_bwd_ms"} of each (forward, fwd_bwd) pair of runners.

    Each of `rounds` rounds gives each method a block of ceil(repeats / rounds) calls (after `warmup` untimed
    ones, which restore its steady state), so a slow spell of a shared machine falls on all methods alike
    instead of on whichever ran then.
    """
    rounds = max(1, min(rounds, repeats))
    per_round = math.ceil(repeats / rounds)
    block_s = None if max_s is None else max_s / rounds
    min_per_round = math.ceil(MIN_REPEATS / rounds)
    samples = [{"fwd_ms": [], "fwd_bwd_ms": []} for _ in runners]
    for _ in range(rounds):
        for times, (forward, fwd_bwd) in zip(samples, runners):
            times["fwd_ms"] += time_samples(forward, device, per_round, warmup, block_s, min_per_round)
            times["fwd_bwd_ms"] += time_samples(fwd_bwd, device, per_round, warmup, block_s, min_per_round)
    return [{key: statistics.median(values) for key, values in times.items()} for times in samples]
