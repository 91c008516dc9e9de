#include "buffer_pool.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

namespace contres {
namespace {

constexpr size_t kMinPooledBytes = size_t(1) << 20;  // smaller blocks are recycled by malloc itself
// A request may take an idle block up to this many times its size (bench/RESULTS.md, "The CPU pool").
constexpr size_t kMaxFitRatio = 2;

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

class BufferPool {
 public:
  void* take(size_t nbytes) {
    std::list<Block> evicted;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto fit = by_size_.lower_bound(nbytes);  // the smallest idle block that holds the request
      if (fit != by_size_.end() && fit->first / kMaxFitRatio <= nbytes) {
        const auto it = std::prev(by_size_.upper_bound(fit->first));  // of that size, the most recently freed
        const Block block = *it->second;
        lru_.erase(it->second);
        by_size_.erase(it);
        stats_.cached_bytes -= block.nbytes;
        stats_.cached_blocks -= 1;
        stats_.hits += 1;
        hand_out(block);
        return block.ptr;
      }
      stats_.misses += 1;
      // A shape the idle blocks cannot serve: the new block counts as in use already, and the stale blocks go
      // as far as the working set needs.
      in_use_bytes_ += nbytes;
      cycle_peak_ = std::max(cycle_peak_, in_use_bytes_);
      shrink_to(idle_budget(), evicted);
    }
    release(evicted);
    try {
      p = allocator()->raw_allocate(nbytes);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_bytes_ -= nbytes;
      throw;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    in_use_[p] = nbytes;
    return p;
  }

  void give(void* p) {
    std::list<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = in_use_.find(p);
      if (it != in_use_.end()) {
        const Block block{p, it->second};
        in_use_.erase(it);
        in_use_bytes_ -= block.nbytes;
        if (in_use_bytes_ == 0) {  // every block is back: a cycle (a training step) ends
          previous_peak_ = cycle_peak_;
          cycle_peak_ = 0;
        }
        lru_.push_back(block);
        by_size_.emplace(block.nbytes, std::prev(lru_.end()));
        stats_.cached_bytes += block.nbytes;
        stats_.cached_blocks += 1;
        shrink_to(idle_budget(), evicted);
      } else {  // not handed out here (cannot happen): a deleter must not throw, so it is just freed
        evicted.push_back({p, 0});
      }
    }
    release(evicted);
  }

  int64_t block_bytes(const void* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = in_use_.find(const_cast<void*>(p));
    return it == in_use_.end() ? 0 : static_cast<int64_t>(it->second);
  }

  PoolStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    PoolStats s = stats_;
    s.in_use_bytes = static_cast<int64_t>(in_use_bytes_);
    s.working_set_bytes = static_cast<int64_t>(working_set());
    return s;
  }

  void set_limit(int64_t bytes) {
    std::list<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.limit_bytes = std::max<int64_t>(0, bytes);
      shrink_to(idle_budget(), evicted);
    }
    release(evicted);
  }

  void empty() {
    std::list<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      shrink_to(0, evicted);
      stats_.evictions -= static_cast<int64_t>(evicted.size());  // emptying on request is not an eviction
    }
    release(evicted);
  }

  void reset_counters() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.hits = stats_.misses = stats_.evictions = 0;
  }

 private:
  struct Block {
    void* ptr;
    size_t nbytes;  // the block's own size, which may exceed the request it serves
  };

  static c10::Allocator* allocator() { return c10::GetDefaultCPUAllocator(); }

  static void release(const std::list<Block>& blocks) {  // outside the lock
    for (const auto& b : blocks) allocator()->raw_deallocate(b.ptr);
  }

  void hand_out(const Block& block) {  // lock held
    in_use_[block.ptr] = block.nbytes;
    in_use_bytes_ += block.nbytes;
    cycle_peak_ = std::max(cycle_peak_, in_use_bytes_);
  }

  size_t working_set() const { return std::max(previous_peak_, cycle_peak_); }  // lock held

  // The idle bytes allowed now: the working set less what is in use, and at most the limit (lock held).
  int64_t idle_budget() const {
    const size_t ws = working_set();
    const size_t room = ws > in_use_bytes_ ? ws - in_use_bytes_ : 0;
    return std::min<int64_t>(stats_.limit_bytes, static_cast<int64_t>(room));
  }

  // Moves the least recently freed blocks into `out` until at most `limit` bytes are idle (lock held).
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
  std::list<Block> lru_;                                       // idle blocks, least recently freed first
  std::multimap<size_t, std::list<Block>::iterator> by_size_;  // the same blocks by size (newest last per size)
  std::unordered_map<void*, size_t> in_use_;                   // blocks handed out, and their sizes
  size_t in_use_bytes_ = 0;
  size_t cycle_peak_ = 0, previous_peak_ = 0;  // peaks of in_use_bytes_ in this cycle and the one before
  PoolStats stats_{0, 0, default_limit(), 0, 0, 0, 0, 0};
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
  return at::from_blob(data, sizes, [](void* p) { pool().give(p); }, options.device(at::kCPU));
}

PoolStats pool_stats() { return pool().stats(); }
void pool_set_limit(int64_t bytes) { pool().set_limit(bytes); }
void pool_empty() { pool().empty(); }
void pool_reset_counters() { pool().reset_counters(); }
int64_t pool_block_bytes(const void* data) { return pool().block_bytes(data); }

}  // namespace contres
