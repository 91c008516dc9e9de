#include "graph_cache.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace contres {
namespace cuda_graphs {
namespace {

constexpr size_t kMaxInstances = 4;

struct Instance {
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::Tensor x, weight, bias;        // static inputs
  at::Tensor out, states, aux;       // static outputs
  // Its backward: static inputs and outputs, the graph, and whether a plain backward has warmed it up.
  std::unique_ptr<at::cuda::CUDAGraph> bwd_graph;
  at::Tensor grad_out, bx, bweight, bbias;
  at::Tensor gx, gweight, gbias, drift;
  bool bwd_warm = false, bwd_failed = false;
  bool in_use = false;  // between taking it and handing its outputs out (another thread may not take it)

  // The caller still holds the saved tensors of its last replay (the same tensors, or views of their storage).
  bool busy() const {
    auto held = [](const at::Tensor& t) {
      return t.defined() && (t.use_count() > 1 || t.storage().use_count() > 1);
    };
    return in_use || held(states) || held(aux);
  }
};

struct Entry {
  bool warm = false;    // one plain call has run (cuDNN's plans and workspaces exist)
  bool failed = false;  // capture failed once: never again for this key
  std::vector<std::unique_ptr<Instance>> instances;
};

std::mutex& mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, Entry>& cache() {
  static auto* c = new std::map<std::string, Entry>();  // never destroyed: graphs may outlive static teardown
  return *c;
}

// `waiter` waits for the work queued on `from` so far.
void wait_for(const c10::cuda::CUDAStream& waiter, const c10::cuda::CUDAStream& from) {
  cudaEvent_t event;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(event, from.stream()));
  C10_CUDA_CHECK(cudaStreamWaitEvent(waiter.stream(), event, 0));
  C10_CUDA_CHECK(cudaEventDestroy(event));  // released once the wait is satisfied
}

bool capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

// body under capture on a side stream into a fresh graph with its own memory pool; throws what capture threw,
// after ending the broken capture.
template <typename Body>
auto capture(at::cuda::CUDAGraph& graph, const Body& body) -> decltype(body()) {
  const auto current = c10::cuda::getCurrentCUDAStream();
  const auto side = c10::cuda::getStreamFromPool(false, current.device_index());
  wait_for(side, current);
  decltype(body()) result;
  {
    const c10::cuda::CUDAStreamGuard guard(side);
    graph.capture_begin(at::cuda::graph_pool_handle());
    try {
      result = body();
    } catch (...) {
      try {
        graph.capture_end();
      } catch (...) {  // an invalidated capture ends with an error of its own; the first one matters
      }
      throw;
    }
    graph.capture_end();
  }
  wait_for(current, side);
  return result;
}

at::Tensor copy_of(const at::Tensor& t) { return t.clone(at::MemoryFormat::Preserve); }

}  // namespace

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> forward(const std::string& key, const at::Tensor& x,
                                                                      const at::Tensor& weight,
                                                                      const at::Tensor& bias,
                                                                      const ForwardBody& body) {
  if (capturing()) return std::nullopt;  // the caller's own capture records the plain calls
  Instance* inst = nullptr;
  bool fresh = false;
  {
    std::lock_guard<std::mutex> lock(mutex());
    Entry& e = cache()[key];
    if (e.failed) return std::nullopt;
    if (!e.warm) {
      e.warm = true;
      return std::nullopt;
    }
    for (auto& i : e.instances)
      if (!i->busy()) {
        inst = i.get();
        break;
      }
    if (!inst && e.instances.size() < kMaxInstances) {
      e.instances.push_back(std::make_unique<Instance>());
      inst = e.instances.back().get();
      fresh = true;
    }
    if (!inst) return std::nullopt;
    inst->in_use = true;
  }
  if (fresh) {
    try {
      inst->x = x.contiguous(at::MemoryFormat::ChannelsLast).clone(at::MemoryFormat::ChannelsLast);
      inst->weight = copy_of(weight.contiguous());
      inst->bias = copy_of(bias.contiguous());
      inst->graph = std::make_unique<at::cuda::CUDAGraph>();
      std::tie(inst->out, inst->states, inst->aux) =
          capture(*inst->graph, [&] { return body(inst->x, inst->weight, inst->bias); });
    } catch (const std::exception& err) {
      std::lock_guard<std::mutex> lock(mutex());
      Entry& e = cache()[key];
      e.failed = true;
      e.instances.pop_back();  // the fresh one is the last
      TORCH_WARN_ONCE("contres: capturing a CUDA graph of the ODE block failed, running it step by step instead: ",
                      err.what());
      return std::nullopt;
    }
  } else {
    inst->x.copy_(x);
    inst->weight.copy_(weight);
    inst->bias.copy_(bias);
  }
  inst->graph->replay();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Preserve);
  out.copy_(inst->out);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result{out, inst->states, inst->aux};
  inst->in_use = false;  // busy() now holds it while the caller keeps states and aux
  return result;
}

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& states, const at::Tensor& aux, const BackwardBody& body) {
  if (capturing()) return std::nullopt;
  Instance* inst = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex());
    for (auto& [key, e] : cache())
      for (auto& i : e.instances)
        if (i->states.defined() && i->states.is_same(states) && i->aux.is_same(aux)) inst = i.get();
    if (!inst || inst->bwd_failed || inst->in_use) return std::nullopt;
    if (!inst->bwd_warm) {
      inst->bwd_warm = true;
      return std::nullopt;
    }
    inst->in_use = true;
  }
  if (!inst->bwd_graph) {
    try {
      inst->grad_out = grad_out.contiguous(at::MemoryFormat::ChannelsLast).clone(at::MemoryFormat::ChannelsLast);
      inst->bx = x.contiguous(at::MemoryFormat::ChannelsLast).clone(at::MemoryFormat::ChannelsLast);
      inst->bweight = copy_of(weight.contiguous());
      inst->bbias = copy_of(bias.contiguous());
      inst->bwd_graph = std::make_unique<at::cuda::CUDAGraph>();
      std::tie(inst->gx, inst->gweight, inst->gbias, inst->drift) = capture(*inst->bwd_graph, [&] {
        return body(inst->grad_out, inst->bx, inst->bweight, inst->bbias);
      });
    } catch (const std::exception& err) {
      inst->bwd_graph.reset();
      inst->bwd_failed = true;
      inst->in_use = false;
      TORCH_WARN_ONCE("contres: capturing a CUDA graph of the ODE block's backward failed, running it step by "
                      "step instead: ", err.what());
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
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> result{gx, inst->gweight.clone(), inst->gbias.clone(),
                                                                    inst->drift.clone()};
  inst->in_use = false;
  return result;
}

int64_t instances() {
  std::lock_guard<std::mutex> lock(mutex());
  int64_t n = 0;
  for (const auto& [key, e] : cache()) n += static_cast<int64_t>(e.instances.size());
  return n;
}

void clear() {
  std::lock_guard<std::mutex> lock(mutex());
  cache().clear();
}

}  // namespace cuda_graphs
}  // namespace contres
