#include "buffer_pool.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>

#include <cstddef>
#include <cstdlib>
#include <list>
#include <map>
#include <mutex>
#include <string>

namespace contres {
namespace {

constexpr size_t kMinPooledBytes = size_t(1) << 20;  // smaller blocks are recycled by malloc itself

int64_t default_limit() {
  if (const char* env = std::getenv("CONTRES_CPU_POOL_BYTES")) {
    try {
      return std::max<int64_t>(0, std::stoll(env));
    } catch (const std::exception&) {
      TORCH_WARN("contres: ignoring CONTRES_CPU_POOL_BYTES='", env, "' (not an integer)");
    }
  }
  return int64_t(1) << 30;
}

// Idle blocks in the order they were freed; the least recently freed are evicted first.
class BufferPool {
 public:
  void* take(size_t nbytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto range = by_size_.equal_range(nbytes);
      if (range.first != range.second) {  // the most recently freed block of this size: its pages are warmest
        const auto it = std::prev(range.second);
        const auto entry = it->second;
        void* p = entry->ptr;
        by_size_.erase(it);
        lru_.erase(entry);
        stats_.cached_bytes -= nbytes;
        stats_.cached_blocks -= 1;
        stats_.hits += 1;
        return p;
      }
      stats_.misses += 1;
    }
    return allocator()->raw_allocate(nbytes);
  }

  void give(void* p, size_t nbytes) {
    std::list<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (static_cast<int64_t>(nbytes) > stats_.limit_bytes) {
        evicted.push_back({p, nbytes});
      } else {
        lru_.push_back({p, nbytes});
        by_size_.emplace(nbytes, std::prev(lru_.end()));
        stats_.cached_bytes += nbytes;
        stats_.cached_blocks += 1;
        shrink_to(stats_.limit_bytes, evicted);
      }
    }
    for (const auto& b : evicted) allocator()->raw_deallocate(b.ptr);  // outside the lock
  }

  PoolStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  void set_limit(int64_t bytes) {
    std::list<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.limit_bytes = std::max<int64_t>(0, bytes);
      shrink_to(stats_.limit_bytes, evicted);
    }
    for (const auto& b : evicted) allocator()->raw_deallocate(b.ptr);
  }

  void empty() {
    std::list<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      shrink_to(0, evicted);
      stats_.evictions -= static_cast<int64_t>(evicted.size());  // emptying on request is not an eviction
    }
    for (const auto& b : evicted) allocator()->raw_deallocate(b.ptr);
  }

  void reset_counters() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.hits = stats_.misses = stats_.evictions = 0;
  }

 private:
  struct Block {
    void* ptr;
    size_t nbytes;
  };

  static c10::Allocator* allocator() { return c10::GetDefaultCPUAllocator(); }

  // Moves the least recently freed blocks into `out` until at most `limit` bytes are cached (lock held).
  void shrink_to(int64_t limit, std::list<Block>& out) {
    while (stats_.cached_bytes > limit && !lru_.empty()) {
      auto oldest = lru_.begin();
      auto range = by_size_.equal_range(oldest->nbytes);
      for (auto it = range.first; it != range.second; ++it)
        if (it->second == oldest) {
          by_size_.erase(it);
          break;
        }
      stats_.cached_bytes -= oldest->nbytes;
      stats_.cached_blocks -= 1;
      stats_.evictions += 1;
      out.splice(out.end(), lru_, oldest);
    }
  }

  std::mutex mutex_;
  std::list<Block> lru_;                                    // idle blocks, least recently freed first
  std::multimap<size_t, std::list<Block>::iterator> by_size_;  // the same blocks by size (newest last per size)
  PoolStats stats_{0, 0, default_limit(), 0, 0, 0};
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

PoolStats pool_stats() { return pool().stats(); }
void pool_set_limit(int64_t bytes) { pool().set_limit(bytes); }
void pool_empty() { pool().empty(); }
void pool_reset_counters() { pool().reset_counters(); }

}  // namespace contres
