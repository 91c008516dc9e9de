"""The CPU buffer pool: contres keeps the large buffers its ops save for the backward (states, aux) when they are
freed, because glibc would return them to the system and the next forward would pay page faults on fresh memory.

What it holds follows the work: a request takes the smallest idle block that fits it (at most twice its size, never
smaller), the pool's footprint (blocks in use plus idle) stays within the peak of blocks in use during the current
and the previous training step, so blocks a change of shapes left behind are given back, and idle memory never
exceeds the limit (CONTRES_CPU_POOL_BYTES, default 1 GiB). A forward no backward follows (no_grad, inference_mode)
keeps nothing and takes nothing from the pool. CUDA uses PyTorch's caching allocator instead."""
from __future__ import annotations

import torch

from . import _ext


def _c():
    if _ext._C is None:
        raise RuntimeError(f"contres: the compiled extension is not loaded: {_ext.LOAD_ERROR}")
    return _ext._C


def cpu_pool_stats() -> dict:
    """cached_bytes / cached_blocks (idle now), limit_bytes, in_use_bytes (blocks handed out now),
    working_set_bytes (the footprint allowed now: the recent peak of in_use_bytes), and hits / misses / evictions
    since the start or the last reset_cpu_pool_counters()."""
    return dict(_c().cpu_pool_stats())


def set_cpu_pool_limit(nbytes: int) -> None:
    """The most idle bytes the pool keeps (0: keep none); evicts down to it at once."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be an integer >= 0, got {nbytes!r}")
    _c().cpu_pool_set_limit(nbytes)


def empty_cpu_pool() -> None:
    """Return every idle block to the system (buffers in use are returned when freed)."""
    _c().cpu_pool_empty()


def reset_cpu_pool_counters() -> None:
    _c().cpu_pool_reset_counters()


def block_bytes(t: torch.Tensor) -> int:
    """The size of the pool's block that holds t's storage (at least the storage's own size), or 0 when the pool
    did not hand it out (a CUDA tensor, or a buffer below the pool's 1 MiB threshold)."""
    if t.device.type != "cpu":
        return 0
    return int(_c().cpu_pool_block_bytes(t.untyped_storage().data_ptr()))
