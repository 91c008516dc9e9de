"""The caches of contres' CUDA paths, bounded and visible as the CPU buffer pool is (pool.py):

- the CUDA-graph cache (set_cuda_paths(graphs="on")): per key -- configuration, shapes, strides, dtype, device,
  and the TF32 and determinism switches -- the captured graphs of whole op calls. Each captured graph is an
  "instance" with its own static inputs and outputs and its own memory pool, so instances are what costs GPU
  memory: at most max_instances of them (default 32) and max_keys keys (default 16), least recently used evicted
  first;
- the plan cache of the fused cuDNN graphs (set_cuda_paths(conv="fused")): one built plan per graph (each costs
  an NVRTC compile of 0.3-1.2 s on first use), at most max_plans (default 256).

An entry a call is using, or whose outputs autograd still holds, is never evicted. In a build without CUDA (or
without the fused graphs) these report an empty cache and keep the limits they are given.
"""
from __future__ import annotations

from .pool import _c


def _check_limit(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def cuda_graph_cache_stats() -> dict:
    """keys and instances held now, max_keys and max_instances, and since the start: captures (forward and
    backward graphs), replays, capture_failures (keys that then run step by step) and evictions."""
    return dict(_c().cuda_graph_cache_stats())


def set_cuda_graph_cache_limit(max_keys: int, max_instances: int) -> None:
    """The most keys and captured instances the CUDA-graph cache holds (0: none, so every call runs step by
    step); evicts down to them at once."""
    _c().cuda_graph_cache_set_limit(_check_limit("max_keys", max_keys), _check_limit("max_instances", max_instances))


def empty_cuda_graph_cache() -> None:
    """Drop every captured graph (their memory returns to PyTorch's caching allocator; outputs a caller still
    holds stay valid). The next call of each key runs plainly again, as warm-up."""
    _c().cuda_graph_cache_empty()


def cudnn_plan_cache_stats() -> dict:
    """plans held now (a graph cuDNN could not build is held as such, so it is not tried again), max_plans, and
    since the start: builds, build_failures, evictions and build_seconds."""
    return dict(_c().cudnn_plan_cache_stats())


def set_cudnn_plan_cache_limit(max_plans: int) -> None:
    """The most plans kept (0: none, so the fused graphs do not run and calls take the ATen path); evicts down to
    it at once."""
    _c().cudnn_plan_cache_set_limit(_check_limit("max_plans", max_plans))


def empty_cudnn_plan_cache() -> None:
    """Drop every plan; the next use of each graph builds it again."""
    _c().cudnn_plan_cache_empty()
