"""contres: fused C++/CUDA kernels for continuous ResNets.

An ODE block integrates du/dt = f(u, theta(t)) (forward Euler, rk4, or leapfrog for the second-order u'' = f); contres runs
the whole block, and its exact discrete adjoint, as single compiled ops, with a pure-PyTorch reference beside
them.
"""
from . import functional, ops, reference
from ._ext import build_info
from .block import ODEBlock
from .caches import (cuda_graph_cache_stats, cudnn_plan_cache_stats, empty_cuda_graph_cache, empty_cudnn_plan_cache,
                     set_cuda_graph_cache_limit, set_cudnn_plan_cache_limit)
from .ops import cpu_paths, cuda_paths, set_cpu_paths, set_cuda_paths
from .pool import cpu_pool_stats, empty_cpu_pool, reset_cpu_pool_counters, set_cpu_pool_limit

__version__ = "0.1.0"
__all__ = ["ODEBlock", "build_info", "functional", "reference", "ops", "cpu_pool_stats", "empty_cpu_pool",
           "set_cpu_pool_limit", "reset_cpu_pool_counters", "set_cpu_paths", "cpu_paths", "set_cuda_paths", "cuda_paths", "cuda_graph_cache_stats",
           "set_cuda_graph_cache_limit", "empty_cuda_graph_cache", "cudnn_plan_cache_stats",
           "set_cudnn_plan_cache_limit", "empty_cudnn_plan_cache", "__version__"]
