"""Activation memory: the bytes one forward keeps for the backward, plus its output.

Measured with torch.autograd.graph.saved_tensors_hooks: every tensor any autograd node saves (built-in ops, custom
Functions such as contres' ops, torch.compile's compiled graphs) passes through the pack hook, whichever allocator
or buffer pool its storage came from. Each distinct storage counts once (views share one), and the inputs
x / weight / bias are left out (the caller holds them anyway). Methods run as CUDA graphs save nothing through
autograd: their memory lives in the graphs' pool and is not measured.
"""
from __future__ import annotations

import gc
import weakref
from typing import Callable, Optional

import torch

from .. import _ext


def saved_bytes(forward: Callable[[], torch.Tensor], inputs: tuple) -> tuple:
    """(bytes, out): the distinct storages that forward() saves for the backward and still holds when it returns,
    plus out's own, the storages of `inputs` excluded."""
    packed = []

    def pack(t):
        # A detached alias: the graph holds it (not the caller's tensor, which may be the node's own output and
        # would make a reference cycle), and it dies with the graph branch that saved it, so the weak references
        # tell which saved tensors are still held when the forward returns.
        alias = t.detach()
        packed.append(weakref.ref(alias))
        return alias

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda alias: alias):
        out = forward()
    excluded = {t.untyped_storage().data_ptr() for t in inputs}
    storages = {}
    for t in [r() for r in packed] + [out]:
        if t is not None and t.untyped_storage().data_ptr() not in excluded:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values()), out


def forward_memory(forward: Callable[[], torch.Tensor], inputs, device: str) -> dict:
    """{"act": saved_bytes of one forward, "alloc", "peak"}: on CUDA also the caching allocator's bytes allocated
    during that forward and still allocated after it, and its peak above the start (a cross-check of act: equal
    unless something bypasses the allocator); None on the CPU."""
    gc.collect()
    if device != "cuda":
        return {"act": saved_bytes(forward, inputs.leaves)[0], "alloc": None, "peak": None}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    act, out = saved_bytes(forward, inputs.leaves)
    torch.cuda.synchronize()
    alloc, peak = torch.cuda.memory_allocated() - base, torch.cuda.max_memory_allocated() - base
    del out
    return {"act": act, "alloc": alloc, "peak": peak}


def cpu_pool_stats() -> Optional[dict]:
    """contres' CPU buffer pool (cached_bytes, cached_blocks, limit_bytes, hits, misses, evictions), or None
    when the extension is not loaded."""
    stats = getattr(_ext._C, "cpu_pool_stats", None)
    return None if stats is None else dict(stats())
