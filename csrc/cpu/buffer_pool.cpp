#include "buffer_pool.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>

#include <cstddef>
#include <map>
#include <mutex>

namespace contres {
namespace {

constexpr size_t kMinPooledBytes = size_t(1) << 20;  // smaller blocks are recycled by malloc itself
constexpr size_t kMaxCachedBytes = size_t(2) << 30;  // idle memory the cache may hold

class BufferPool {
 public:
  void* take(size_t nbytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(nbytes);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= nbytes;
        return p;
      }
    }
    return c10::GetDefaultCPUAllocator()->raw_allocate(nbytes);
  }

  void give(void* p, size_t nbytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cached_ + nbytes > kMaxCachedBytes) {
      c10::GetDefaultCPUAllocator()->raw_deallocate(p);
      return;
    }
    free_.emplace(nbytes, p);
    cached_ += nbytes;
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

BufferPool& pool() {
  static auto* instance = new BufferPool();  // never destroyed: tensors may be freed during interpreter exit
  return *instance;
}

}  // namespace

at::Tensor pooled_empty_cpu(c10::IntArrayRef sizes, const at::TensorOptions& options) {
  size_t numel = 1;
  for (const int64_t s : sizes) numel *= static_cast<size_t>(s);
  const size_t nbytes = numel * options.dtype().itemsize();
  if (nbytes < kMinPooledBytes) return at::empty(sizes, options);
  void* data = pool().take(nbytes);
  return at::from_blob(data, sizes, [nbytes](void* p) { pool().give(p, nbytes); }, options.device(at::kCPU));
}

}  // namespace contres
