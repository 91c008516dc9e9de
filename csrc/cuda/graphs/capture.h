// One CUDA graph of a piece of work: captured on a stream this thread owns, in thread-local capture mode (other
// threads' CUDA calls neither break the capture nor are refused because of it), into a private memory pool, and
// replayed on the current stream. A capture that fails leaves nothing behind: the stream is no longer capturing,
// the caching allocator routes no allocation to the graph's pool, and the pool is released. (torch's CUDAGraph
// cleans up after a failed capture_end itself only from torch 2.14 on; see capture.cpp.)
#pragma once

#include <memory>

namespace contres {
namespace cuda_graphs {

class CapturedGraph {
 public:
  CapturedGraph();
  ~CapturedGraph();
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;

  // Runs work() under capture and returns its result: tensors of the graph's pool, which each replay rewrites.
  // Throws what the work or the capture threw, after the clean-up above; the graph cannot be replayed then.
  template <typename Work>
  auto capture(const Work& work) -> decltype(work()) {
    begin();
    decltype(work()) result;
    try {
      result = work();
    } catch (...) {
      abandon();
      throw;
    }
    end();
    return result;
  }

  void replay();  // on the current stream, after a successful capture

 private:
  void begin();
  void end();
  void abandon() noexcept;

  struct State;
  std::unique_ptr<State> s_;
};

// Tests: the next capture (on any thread) breaks as a capture does when the captured work synchronises.
void break_next_capture();

}  // namespace cuda_graphs
}  // namespace contres
