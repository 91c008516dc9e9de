#include "capture.h"

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#if CONTRES_TORCH_VERSION_NUM >= 210
#include <ATen/core/CachingHostAllocator.h>
#endif

#include <atomic>
#include <optional>
#include <unordered_map>
#include <utility>

namespace contres {
namespace cuda_graphs {
namespace {

std::atomic<bool> break_next{false};

// torch's CUDAGraph, with the members its reset() reads, for the clean-up after a capture_end that threw.
// Up to torch 2.13, capture_end throws at cudaStreamEndCapture before it stops routing the stream's allocations
// to the graph's private pool (whose filter points at this object), and reset() releases the pool only after a
// successful capture_end: both are left to us. torch 2.14 records both (capturing_to_pool_, allocated_pool_)
// and does them in reset().
class TorchGraph : public at::cuda::CUDAGraph {
 public:
  void release_after_failed_end() noexcept;

 private:
  template <typename G>
  static constexpr auto resets_failed_capture(int) -> decltype(std::declval<G&>().capturing_to_pool_, true) {
    return true;
  }
  template <typename G>
  static constexpr bool resets_failed_capture(long) {
    return false;
  }

  bool released_ = false;
};

void TorchGraph::release_after_failed_end() noexcept {
  if constexpr (!resets_failed_capture<TorchGraph>(0)) {
    if (capture_ended_ || released_) return;  // reset() releases the pool after a successful capture_end
    released_ = true;
    try {
      c10::cuda::CUDACachingAllocator::endAllocateToPool(capture_dev_, mempool_id_);
    } catch (const c10::Error&) {  // capture_end got that far
    }
    try {
      c10::cuda::CUDACachingAllocator::releasePool(capture_dev_, mempool_id_);
    } catch (const c10::Error&) {
    }
#if CONTRES_TORCH_VERSION_NUM >= 210
    // The pinned-host allocator's pool of the same id, where capture_begin opened one (end throws otherwise).
    try {
      auto* host = at::getHostAllocator(at::kCUDA);
      host->end_allocate_to_pool(mempool_id_);
      host->release_pool(mempool_id_);
    } catch (const c10::Error&) {
    }
#endif
  }
}

// A stream of this thread's own per device, for captures only: never shared with other code, and never with
// another thread's capture. Never destroyed (work may still be queued on it when the thread ends).
c10::cuda::CUDAStream capture_stream(c10::DeviceIndex device) {
  thread_local std::unordered_map<c10::DeviceIndex, cudaStream_t> streams;
  cudaStream_t& s = streams[device];
  if (!s) {
    const c10::cuda::CUDAGuard guard(device);
    C10_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  }
  return c10::cuda::getStreamFromExternal(s, device);
}

// `waiter` waits for the work queued on `from` so far.
void wait_for(const c10::cuda::CUDAStream& waiter, const c10::cuda::CUDAStream& from) {
  cudaEvent_t event;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(event, from.stream()));
  C10_CUDA_CHECK(cudaStreamWaitEvent(waiter.stream(), event, 0));
  C10_CUDA_CHECK(cudaEventDestroy(event));  // released once the wait is satisfied
}

}  // namespace

struct CapturedGraph::State {
  std::unique_ptr<TorchGraph> graph = std::make_unique<TorchGraph>();
  std::optional<c10::cuda::CUDAStream> stream;
  std::optional<c10::cuda::CUDAStreamGuard> on_stream;  // the capture stream is current during capture
  bool capturing = false, ready = false;
};

CapturedGraph::CapturedGraph() : s_(std::make_unique<State>()) {}
CapturedGraph::~CapturedGraph() = default;

void CapturedGraph::begin() {
  TORCH_CHECK(!s_->ready && !s_->capturing && s_->graph, "contres: internal error: a CUDA graph is captured once");
  const auto caller = c10::cuda::getCurrentCUDAStream();
  s_->stream = capture_stream(caller.device_index());
  wait_for(*s_->stream, caller);
  s_->on_stream.emplace(*s_->stream);
  s_->capturing = true;
  try {
    s_->graph->capture_begin(at::cuda::graph_pool_handle(), cudaStreamCaptureModeThreadLocal);
  } catch (...) {
    abandon();
    throw;
  }
}

void CapturedGraph::end() {
  if (break_next.exchange(false)) {
    (void)cudaStreamSynchronize(s_->stream->stream());  // not allowed while capturing: invalidates the capture
    (void)cudaGetLastError();
  }
  try {
    s_->graph->capture_end();
  } catch (...) {
    s_->graph->release_after_failed_end();
    abandon();
    throw;
  }
  s_->capturing = false;
  s_->on_stream.reset();
  s_->ready = true;
}

void CapturedGraph::abandon() noexcept {
  if (s_->capturing && s_->graph) {
    // The work threw while capturing: torch's own capture_end ends the capture and the pool's allocation (and
    // keeps a partial graph, never replayed, when the capture is still valid).
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(s_->stream->stream(), &status) == cudaSuccess &&
        status != cudaStreamCaptureStatusNone) {
      try {
        s_->graph->capture_end();
      } catch (...) {
        s_->graph->release_after_failed_end();
      }
    }
    // Whatever still captures on this stream (capture_end refused before cudaStreamEndCapture) ends here.
    if (cudaStreamIsCapturing(s_->stream->stream(), &status) == cudaSuccess &&
        status != cudaStreamCaptureStatusNone) {
      cudaGraph_t partial = nullptr;
      (void)cudaStreamEndCapture(s_->stream->stream(), &partial);
      if (partial) (void)cudaGraphDestroy(partial);
    }
    (void)cudaGetLastError();
  }
  s_->graph.reset();  // CUDAGraph::reset: the capture-id registry, and the pool where capture_end succeeded
  s_->capturing = false;
  s_->on_stream.reset();
}

void CapturedGraph::replay() {
  TORCH_CHECK(s_->ready, "contres: internal error: replay of a CUDA graph that was not captured");
  s_->graph->replay();
}

void break_next_capture() { break_next.store(true); }

}  // namespace cuda_graphs
}  // namespace contres
