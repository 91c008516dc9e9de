// A cache of the large CPU buffers the ops keep between forward and backward (saved states and aux). glibc hands
// blocks this large back to the operating system when they are freed, so every forward would pay page faults
// writing fresh memory (measured: 7-32 MB of faults per forward, 15-30 % of its time); a training loop asks for
// the same sizes every step, so keeping the blocks its last step gave back is enough.
//
// The policy (measured in bench/RESULTS.md, "The CPU pool"):
// - a request takes the smallest idle block that holds it and is at most twice its size (the most recently freed
//   of that size), so a smaller batch reuses a larger one's warm pages; never a block smaller than asked;
// - the pool's footprint (blocks in use + idle) stays within its working set, the peak of blocks in use during the
//   current and the previous cycle (a cycle ends when every block is back, i.e. after a training step's
//   backward): when shapes change, the first request that finds no block evicts the stale ones (least recently
//   freed first), and a step that needs less than the one before gives the difference back at its end;
// - idle memory never exceeds the limit (CONTRES_CPU_POOL_BYTES, default 1 GiB; 0 disables caching).
// CUDA has its own caching allocator.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>

namespace contres {

// at::empty(sizes, options) on the CPU (contiguous), served from and returned to the pool when large.
at::Tensor pooled_empty_cpu(c10::IntArrayRef sizes, const at::TensorOptions& options);

struct PoolStats {
  int64_t cached_bytes = 0, cached_blocks = 0;  // idle blocks held now
  int64_t limit_bytes = 0;                      // most idle bytes held
  int64_t in_use_bytes = 0;                     // blocks handed out and not yet given back (their full sizes)
  int64_t working_set_bytes = 0;                // the footprint allowed now: the recent peak of in_use_bytes
  int64_t hits = 0, misses = 0, evictions = 0;  // since start (or the last reset)
};
PoolStats pool_stats();
void pool_set_limit(int64_t bytes);  // evicts at once down to the new limit; 0 disables caching
void pool_empty();                   // returns every idle block to the system
void pool_reset_counters();

// The size of the pooled block that holds `data` (its start), or 0 when the pool did not hand it out: the
// block a request got, for tests that it is never smaller than asked.
int64_t pool_block_bytes(const void* data);

}  // namespace contres
