// A small cache of the large CPU buffers the ops keep between forward and backward (saved states and aux).
// glibc hands blocks this large back to the operating system when they are freed, so every forward would
// pay page faults writing fresh memory (measured: 7-32 MB of faults per forward, 15-30 % of its time);
// the buffers are the same sizes on every training step, so keeping them is enough. CUDA has its own caching
// allocator and does not use this.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <c10/util/ArrayRef.h>

namespace contres {

// at::empty(sizes, options) on the CPU, served from and returned to the cache when large.
at::Tensor pooled_empty_cpu(c10::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace contres
