#include "graph_cache.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "../../cuda_caches.h"
#include "../../describe.h"
#include "../../lru.h"
#include "../precision.h"
#include "capture.h"

namespace contres {
namespace cuda_graphs {
namespace {

struct Instance {
  std::string key;
  CapturedGraph graph;
  at::Tensor x, weight, bias;   // static inputs
  at::Tensor out, states, aux;  // static outputs
  // Its backward: the graph, its static inputs and outputs, and whether a plain backward has warmed it up.
  std::unique_ptr<CapturedGraph> bwd_graph;
  at::Tensor grad_out, bx, bweight, bbias;
  at::Tensor gx, gweight, gbias, drift;
  bool bwd_warm = false, bwd_failed = false;
  // Under the cache's mutex. While in_use, only the call that set it touches the tensors above.
  bool in_use = false;
  uint64_t last_used = 0;

  // A call is using it, or the caller still holds the saved tensors of its last replay (the same tensors, or
  // views of their storage).
  bool busy() const {
    auto held = [](const at::Tensor& t) {
      return t.defined() && (t.use_count() > 1 || t.storage().use_count() > 1);
    };
    return in_use || held(states) || held(aux);
  }
};

struct Entry {
  bool warm = false;    // one plain call has run (cuDNN's plans and workspaces exist)
  bool failed = false;  // capture failed once: not again while the key is held
  std::vector<std::shared_ptr<Instance>> instances;
  bool pinned() const {
    for (const auto& i : instances)
      if (i->busy()) return true;
    return false;
  }
};

struct Cache {
  std::mutex mutex;
  LruMap<Entry> entries;
  int64_t max_keys = kDefaultGraphKeys, max_instances = kDefaultGraphInstances;
  uint64_t tick = 0;
  GraphCacheStats counts;  // captures, replays, capture_failures, evictions
};

// Never destroyed: at exit, CUDA may be gone before static destructors run, and a graph's destructor calls it.
Cache& cache() {
  static auto* c = new Cache();
  return *c;
}

// Under the mutex from here to the end of the namespace.

int64_t instance_count(Cache& c) {
  int64_t n = 0;
  c.entries.for_each([&](const std::string&, const Entry& e) { n += static_cast<int64_t>(e.instances.size()); });
  return n;
}

// Drops the least recently used instance that is not busy; false when there is none.
bool evict_an_instance(Cache& c) {
  Entry* owner = nullptr;
  size_t index = 0;
  uint64_t oldest = UINT64_MAX;
  c.entries.for_each([&](const std::string&, Entry& e) {
    for (size_t i = 0; i < e.instances.size(); ++i)
      if (!e.instances[i]->busy() && e.instances[i]->last_used < oldest) {
        owner = &e, index = i, oldest = e.instances[i]->last_used;
      }
  });
  if (!owner) return false;
  owner->instances.erase(owner->instances.begin() + static_cast<std::ptrdiff_t>(index));
  ++c.counts.evictions;
  return true;
}

// Keys beyond max_keys (least recently used first, none with a busy instance), then instances beyond
// max_instances.
void trim(Cache& c, size_t max_keys) {
  const int64_t before = instance_count(c);
  c.entries.trim(max_keys, [](const Entry& e) { return e.pinned(); });
  c.counts.evictions += before - instance_count(c);
  while (instance_count(c) > c.max_instances && evict_an_instance(c)) {
  }
}

Entry* find_or_insert(Cache& c, const std::string& key) {
  if (Entry* e = c.entries.find(key)) return e;
  trim(c, c.max_keys == 0 ? 0 : static_cast<size_t>(c.max_keys) - 1);
  return c.entries.find_or_insert(key, static_cast<size_t>(c.max_keys), [](const Entry& e) { return e.pinned(); });
}

bool room_for_an_instance(Cache& c) {
  while (instance_count(c) >= c.max_instances)
    if (!evict_an_instance(c)) return false;
  return true;
}

// Clears in_use under the mutex when the call that set it returns, however it returns.
struct Release {
  Cache& c;
  Instance& inst;
  ~Release() {
    const std::lock_guard<std::mutex> lock(c.mutex);
    inst.in_use = false;
  }
};

bool capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

at::Tensor copy_of(const at::Tensor& t) { return t.clone(at::MemoryFormat::Preserve); }
at::Tensor channels_last_copy(const at::Tensor& t) {
  return t.contiguous(at::MemoryFormat::ChannelsLast).clone(at::MemoryFormat::ChannelsLast);
}

}  // namespace

std::string key_of(const std::string& config, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  std::string key = config;
  for (const at::Tensor* t : {&x, &weight, &bias}) key += ' ' + describe(t->sizes()) + describe(t->strides());
  return key + ' ' + describe(x.scalar_type()) + ' ' + describe(x.device()) + ' ' + precision_key();
}

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> forward(const std::string& key, const at::Tensor& x,
                                                                      const at::Tensor& weight,
                                                                      const at::Tensor& bias,
                                                                      const ForwardBody& body) {
  // The caller's own capture records the plain calls; an empty problem has nothing to capture.
  if (capturing() || x.numel() == 0) return std::nullopt;
  Cache& c = cache();
  std::shared_ptr<Instance> inst;
  bool fresh = false;
  {
    const std::lock_guard<std::mutex> lock(c.mutex);
    Entry* e = find_or_insert(c, key);
    if (!e || e->failed) return std::nullopt;
    if (!e->warm) {
      e->warm = true;
      return std::nullopt;
    }
    for (const auto& i : e->instances)
      if (!i->busy()) {
        inst = i;
        break;
      }
    if (!inst && e->instances.size() < kMaxInstancesPerKey && room_for_an_instance(c)) {
      inst = std::make_shared<Instance>();
      inst->key = key;
      e->instances.push_back(inst);
      fresh = true;
    }
    if (!inst) return std::nullopt;
    inst->in_use = true;
    inst->last_used = ++c.tick;
  }
  const Release release{c, *inst};
  if (fresh) {
    try {
      inst->x = channels_last_copy(x);
      inst->weight = copy_of(weight.contiguous());
      inst->bias = copy_of(bias.contiguous());
      std::tie(inst->out, inst->states, inst->aux) =
          inst->graph.capture([&] { return body(inst->x, inst->weight, inst->bias); });
    } catch (const std::exception& err) {
      {
        const std::lock_guard<std::mutex> lock(c.mutex);
        ++c.counts.capture_failures;
        if (Entry* e = c.entries.find(key)) {  // unless evicted meanwhile; other threads may have added instances
          e->failed = true;
          for (auto it = e->instances.begin(); it != e->instances.end(); ++it)
            if (it->get() == inst.get()) {
              e->instances.erase(it);
              break;
            }
        }
      }
      // Once per key: the key is marked and not tried again while the cache holds it.
      TORCH_WARN("contres: capturing a CUDA graph of the ODE block failed, running it step by step instead: ",
                 err.what());
      return std::nullopt;
    }
  } else {
    inst->x.copy_(x);
    inst->weight.copy_(weight);
    inst->bias.copy_(bias);
  }
  inst->graph.replay();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Preserve);
  out.copy_(inst->out);
  {
    const std::lock_guard<std::mutex> lock(c.mutex);
    c.counts.captures += fresh;
    ++c.counts.replays;
  }
  // Handed out before `release` clears in_use: from then on the caller's references keep the instance busy.
  return std::make_tuple(out, inst->states, inst->aux);
}

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& states, const at::Tensor& aux, const BackwardBody& body) {
  if (capturing() || x.numel() == 0) return std::nullopt;
  Cache& c = cache();
  std::shared_ptr<Instance> inst;
  {
    const std::lock_guard<std::mutex> lock(c.mutex);
    c.entries.for_each([&](const std::string&, const Entry& e) {
      for (const auto& i : e.instances)
        if (!i->in_use && i->states.is_same(states) && i->aux.is_same(aux)) inst = i;
    });
    if (!inst || inst->bwd_failed) return std::nullopt;
    c.entries.find(inst->key);  // now the most recently used key
    if (!inst->bwd_warm) {
      inst->bwd_warm = true;
      return std::nullopt;
    }
    inst->in_use = true;
    inst->last_used = ++c.tick;
  }
  const Release release{c, *inst};
  const bool fresh = !inst->bwd_graph;
  if (fresh) {
    try {
      inst->grad_out = channels_last_copy(grad_out);
      inst->bx = channels_last_copy(x);
      inst->bweight = copy_of(weight.contiguous());
      inst->bbias = copy_of(bias.contiguous());
      auto graph = std::make_unique<CapturedGraph>();
      std::tie(inst->gx, inst->gweight, inst->gbias, inst->drift) =
          graph->capture([&] { return body(inst->grad_out, inst->bx, inst->bweight, inst->bbias); });
      inst->bwd_graph = std::move(graph);
    } catch (const std::exception& err) {
      inst->bwd_failed = true;
      {
        const std::lock_guard<std::mutex> lock(c.mutex);
        ++c.counts.capture_failures;
      }
      TORCH_WARN("contres: capturing a CUDA graph of the ODE block's backward failed, running it step by step "
                 "instead: ", err.what());  // once per instance
      return std::nullopt;
    }
  } else {
    inst->grad_out.copy_(grad_out);
    inst->bx.copy_(x);
    inst->bweight.copy_(weight);
    inst->bbias.copy_(bias);
  }
  inst->bwd_graph->replay();
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Preserve);
  gx.copy_(inst->gx);
  auto result = std::make_tuple(gx, inst->gweight.clone(), inst->gbias.clone(), inst->drift.clone());
  {
    const std::lock_guard<std::mutex> lock(c.mutex);
    c.counts.captures += fresh;
    ++c.counts.replays;
  }
  return result;
}

}  // namespace cuda_graphs

GraphCacheStats cuda_graph_cache_stats() {
  auto& c = cuda_graphs::cache();
  const std::lock_guard<std::mutex> lock(c.mutex);
  GraphCacheStats s = c.counts;
  s.keys = static_cast<int64_t>(c.entries.size());
  s.instances = cuda_graphs::instance_count(c);
  s.max_keys = c.max_keys;
  s.max_instances = c.max_instances;
  return s;
}

void cuda_graph_cache_set_limit(int64_t max_keys, int64_t max_instances) {
  check_cache_limit(max_keys, "max_keys");
  check_cache_limit(max_instances, "max_instances");
  auto& c = cuda_graphs::cache();
  const std::lock_guard<std::mutex> lock(c.mutex);
  c.max_keys = max_keys;
  c.max_instances = max_instances;
  cuda_graphs::trim(c, static_cast<size_t>(max_keys));
}

void cuda_graph_cache_empty() {
  auto& c = cuda_graphs::cache();
  const std::lock_guard<std::mutex> lock(c.mutex);
  c.counts.evictions += cuda_graphs::instance_count(c);
  c.entries.clear();  // instances in use live on in their calls (shared_ptr) and go when those return
}

}  // namespace contres
