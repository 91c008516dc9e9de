// The cache controls of cuda_caches.h in a build without the caches: empty caches that keep their limits.
#include "cuda_caches.h"

#include <atomic>

namespace contres {
namespace {
[[maybe_unused]] std::atomic<int64_t> graph_keys{kDefaultGraphKeys}, graph_instances{kDefaultGraphInstances},
    plans{kDefaultPlans};
}  // namespace

#ifndef CONTRES_WITH_CUDA
GraphCacheStats cuda_graph_cache_stats() {
  GraphCacheStats s;
  s.max_keys = graph_keys.load();
  s.max_instances = graph_instances.load();
  return s;
}
void cuda_graph_cache_set_limit(int64_t max_keys, int64_t max_instances) {
  check_cache_limit(max_keys, "max_keys");
  check_cache_limit(max_instances, "max_instances");
  graph_keys.store(max_keys);
  graph_instances.store(max_instances);
}
void cuda_graph_cache_empty() {}
#endif

#ifndef CONTRES_WITH_CUDNN_FUSION
PlanCacheStats cudnn_plan_cache_stats() {
  PlanCacheStats s;
  s.max_plans = plans.load();
  return s;
}
void cudnn_plan_cache_set_limit(int64_t max_plans) {
  check_cache_limit(max_plans, "max_plans");
  plans.store(max_plans);
}
void cudnn_plan_cache_empty() {}
#endif

}  // namespace contres
