#include "plan_cache.h"

#include <chrono>
#include <vector>

#include "../../cuda_caches.h"
#include "../../lru.h"
#include "fused_step.h"

namespace contres {
namespace cudnn_fusion {
namespace {

struct Cache {
  std::mutex mutex;
  LruMap<std::shared_ptr<Plan>> plans;
  int64_t max_plans = kDefaultPlans;
  PlanCacheStats counts;  // builds, build_failures, evictions, build_seconds
};

Cache& cache() {
  static auto* c = new Cache();  // never destroyed (see plan_cache.h)
  return *c;
}

// A caller holds it: being built, or run.
bool in_use(const std::shared_ptr<Plan>& p) { return p && p.use_count() > 1; }

void build(Plan& plan, const GraphSpec& spec, int sm) {
  const auto t0 = std::chrono::steady_clock::now();
  BuiltGraph built = build_graph(spec, sm);
  plan.build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  plan.tried = true;
  plan.usable = built.error.empty();
  plan.engine = plan.usable ? built.engine : "unsupported: " + built.error;
  plan.workspace = built.workspace;
  plan.graph = std::move(built.graph);
  Cache& c = cache();
  const std::lock_guard<std::mutex> lock(c.mutex);
  ++c.counts.builds;
  c.counts.build_failures += !plan.usable;
  c.counts.build_seconds += plan.build_s;
}

}  // namespace

std::shared_ptr<Plan> find_plan(const GraphSpec& spec, int device, int sm, bool may_build) {
  const std::string key = "cuda:" + std::to_string(device) + " sm" + std::to_string(sm) + " " + describe(spec);
  std::shared_ptr<Plan> plan;
  {
    Cache& c = cache();
    const std::lock_guard<std::mutex> lock(c.mutex);
    std::shared_ptr<Plan>* slot = c.plans.find(key);
    if (!slot) {
      const auto max = static_cast<size_t>(c.max_plans);
      c.counts.evictions += c.plans.trim(max == 0 ? 0 : max - 1, in_use);
      slot = c.plans.find_or_insert(key, max, in_use);
      if (!slot) return nullptr;  // no room: max_plans is 0, or every plan held is in use
    }
    if (!*slot) {
      *slot = std::make_shared<Plan>();
      (*slot)->key = key;
    }
    plan = *slot;
  }
  const std::lock_guard<std::mutex> lock(plan->build_mutex);  // one build per key; later callers wait for it
  if (!plan->tried) {
    if (!may_build) return nullptr;
    build(*plan, spec, sm);
  }
  return plan->usable ? plan : nullptr;
}

bool execute(Plan& plan, const Operands& operands, void* workspace) {
  std::string why;
  if (run_graph(*plan.graph, operands, workspace, &why)) {
    plan.runs.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  const std::lock_guard<std::mutex> lock(plan.build_mutex);
  plan.usable = false;  // the graph stays: another thread may be running it
  plan.engine = "unsupported: execute: " + why;
  return false;
}

std::vector<GraphRecord> built_graphs() {
  std::vector<std::shared_ptr<Plan>> plans;
  {
    Cache& c = cache();
    const std::lock_guard<std::mutex> lock(c.mutex);
    c.plans.for_each([&](const std::string&, const std::shared_ptr<Plan>& p) { plans.push_back(p); });
  }
  std::vector<GraphRecord> out;
  for (auto it = plans.rbegin(); it != plans.rend(); ++it) {  // least recently used first, the latest last
    const Plan& p = **it;
    const std::lock_guard<std::mutex> lock(p.build_mutex);
    if (p.tried) out.push_back({p.key, p.engine, p.build_s, p.runs.load(std::memory_order_relaxed)});
  }
  return out;
}

}  // namespace cudnn_fusion

PlanCacheStats cudnn_plan_cache_stats() {
  auto& c = cudnn_fusion::cache();
  const std::lock_guard<std::mutex> lock(c.mutex);
  PlanCacheStats s = c.counts;
  s.plans = static_cast<int64_t>(c.plans.size());
  s.max_plans = c.max_plans;
  return s;
}

void cudnn_plan_cache_set_limit(int64_t max_plans) {
  check_cache_limit(max_plans, "max_plans");
  auto& c = cudnn_fusion::cache();
  const std::lock_guard<std::mutex> lock(c.mutex);
  c.max_plans = max_plans;
  c.counts.evictions += c.plans.trim(static_cast<size_t>(max_plans), cudnn_fusion::in_use);
}

void cudnn_plan_cache_empty() {
  auto& c = cudnn_fusion::cache();
  const std::lock_guard<std::mutex> lock(c.mutex);
  c.counts.evictions += static_cast<int64_t>(c.plans.size());
  c.plans.clear();  // plans in use live on in their callers
}

}  // namespace contres
