"""The CPU buffer pool: contres keeps the large buffers its ops save for the backward (states, aux) when they are
freed, because glibc would return them to the system and the next forward would pay page faults on fresh memory.
Idle memory is bounded (CONTRES_CPU_POOL_BYTES, default 1 GiB); past the bound the least recently freed blocks are
returned. CUDA uses PyTorch's caching allocator instead."""
from __future__ import annotations

from . import _ext


def _c():
    if _ext._C is None:
        raise RuntimeError(f"contres: the compiled extension is not loaded: {_ext.LOAD_ERROR}")
    return _ext._C


def cpu_pool_stats() -> dict:
    """cached_bytes / cached_blocks (idle now), limit_bytes, and hits / misses / evictions since the start or
    the last reset_cpu_pool_counters()."""
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
