// What the forward keeps for the backward, as tensors: built from the table in config.h, for both the real ops
// (which allocate them) and the Meta kernels that torch.compile and torch.export trace (with symbolic sizes), and
// checked field by field when the backward is handed them. See docs/math.md ("What each configuration keeps").
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/core/TensorOptions.h>

#include <string>
#include <vector>

#include "config.h"
#include "describe.h"  // the messages of check_matches and of the input checks

namespace contres {

// Sizes of one block call, symbolic under torch.compile's tracing, concrete otherwise.
struct Dims {
  c10::SymInt B, C, H, W;  // the state u
  c10::SymInt k;           // kernel size
  int64_t n_steps = 0;     // N (always concrete: the weight's rows give it)
};

// The dtypes of one call: the state's (x's) and the convolutions' (weight's). They differ in mixed precision
// (CPU: float32 states with bf16 or fp16 weights, what torch.autocast does per op): the running state and the
// adjoint stay float32, the convolutions read and write the low dtype.
struct Dtypes {
  at::ScalarType state = at::kFloat, conv = at::kFloat;
  bool mixed() const { return state != conv; }
};

// How many state-shaped slots and aux entries a configuration keeps.
struct SavedCounts {
  int64_t states = 0;  // entries of the (n, B, C, H, W) channels_last stack
  int64_t aux = 0;     // entries of the aux tensor (0: the aux tensor is empty)
};
SavedCounts saved_counts(const Config& cfg, int64_t n_steps);

// A tensor's full description: sizes, strides (elements) and dtype.
struct TensorSpec {
  std::vector<c10::SymInt> sizes, strides;
  at::ScalarType dtype;
};

// states: (n, B, C, H, W) in channels_last (a (n, B, H, W, C) block, permuted). Full storage keeps what the
//         backward's convolutions read, in the convolution dtype; checkpoints and memory="reversible" keep the
//         running states the backward restarts from, in the state dtype (the same unless mixed).
// aux:    Mask:  (n_aux, ceil(B*H*W*C / 8)) uint8 -- per row, the signs of one evaluation's z, bit t of byte j
//                being element 8j + t of z in channels_last memory order;
//         Value: (n_aux, B, C, H, W) channels_last like the states, the convolution dtype;
//         Pre:   (n_aux, B, H, W, C) contiguous -- z per pixel, the channel vectors "tv" normalises, the
//                convolution dtype;
//         None:  (0,) of the convolution dtype.
TensorSpec states_spec(const Config& cfg, const Dims& d, Dtypes dtypes);
TensorSpec aux_spec(const Config& cfg, const Dims& d, Dtypes dtypes);
at::ScalarType states_dtype(const Config& cfg, Dtypes dtypes);
// n entries of those layouts, for the backward's own scratch (replayed segments).
TensorSpec state_stack_spec(int64_t n, const Dims& d, at::ScalarType dtype);
TensorSpec aux_stack_spec(Aux kind, int64_t n, const Dims& d, at::ScalarType dtype);

// A tensor of the spec (CPU: served by the buffer pool, see cpu/buffer_pool.h).
at::Tensor allocate(const TensorSpec& spec, const at::TensorOptions& options);

// Raises a clear error naming `name` unless t matches spec (sizes; strides of every dimension longer than 1;
// dtype) and is on `device`. `what` says what the tensor should be.
void check_matches(const at::Tensor& t, const TensorSpec& spec, const c10::Device& device, const char* name,
                   const char* what);

// Bytes of bit-packed mask for n elements.
inline int64_t mask_bytes(int64_t n) { return (n + 7) / 8; }

}  // namespace contres
