// The caches of the CUDA paths, bounded and visible from Python as the CPU buffer pool is (contres.caches):
//   - the CUDA-graph cache (cuda/graphs/graph_cache.cpp): per key (configuration, shapes, precision flags), the
//     captured graphs of whole op calls, each an "instance" with its own static inputs, outputs and memory pool;
//   - the plan cache of the fused cuDNN graphs (cuda/cudnn_step/plan_cache.cpp): one built plan per graph.
// Both evict least recently used entries past their limits (never one a call is using). In a build without them
// (CPU only; CUDA without the fused graphs) the functions report an empty cache and keep the limits they are
// given (cuda_caches.cpp).
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

namespace contres {

struct GraphCacheStats {
  int64_t keys = 0, instances = 0;          // held now (a key is held from its warm-up call on)
  int64_t max_keys = 0, max_instances = 0;  // the limits
  int64_t captures = 0, replays = 0;        // forward and backward graphs captured, and replays of either
  int64_t capture_failures = 0;             // captures that failed (the key then runs step by step)
  int64_t evictions = 0;                    // instances dropped for room or by a lower limit
};
constexpr int64_t kDefaultGraphKeys = 16, kDefaultGraphInstances = 32;
GraphCacheStats cuda_graph_cache_stats();
void cuda_graph_cache_set_limit(int64_t max_keys, int64_t max_instances);  // evicts down to them at once
void cuda_graph_cache_empty();  // instances in use are dropped when their call returns

struct PlanCacheStats {
  int64_t plans = 0, max_plans = 0;      // held now (a plan cuDNN could not build is held as such), the limit
  int64_t builds = 0, build_failures = 0;  // builds tried, and of those failed
  int64_t evictions = 0;
  double build_seconds = 0;  // the builds' time (NVRTC compiles most of it)
};
constexpr int64_t kDefaultPlans = 256;
PlanCacheStats cudnn_plan_cache_stats();
void cudnn_plan_cache_set_limit(int64_t max_plans);
void cudnn_plan_cache_empty();

inline void check_cache_limit(int64_t value, const char* name) {
  TORCH_CHECK_VALUE(value >= 0, "contres: ", name, " must be >= 0, got ", value);
}

}  // namespace contres
