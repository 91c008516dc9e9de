// A bounded cache of the large CPU buffers the ops keep between forward and backward (saved states and aux).
// glibc hands blocks this large back to the operating system when they are freed, so every forward would pay
// page faults writing fresh memory (measured: 7-32 MB of faults per forward, 15-30 % of its time); the buffers
// are the same sizes on every training step, so keeping the recently freed ones is enough. Idle memory is
// bounded (CONTRES_CPU_POOL_BYTES, default 1 GiB): past the limit the least recently freed blocks go back to
// the system, so a change of shapes does not leave stale sizes cached. CUDA has its own caching allocator.
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
  int64_t hits = 0, misses = 0, evictions = 0;  // since start (or the last reset)
};
PoolStats pool_stats();
void pool_set_limit(int64_t bytes);  // evicts at once down to the new limit; 0 disables caching
void pool_empty();                   // returns every idle block to the system
void pool_reset_counters();

}  // namespace contres
