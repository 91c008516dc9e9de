// What the forward keeps for the backward, as tensors: built from the table in config.h, for both the real ops
// (which allocate them) and the Meta kernels that torch.compile and torch.export trace (with symbolic sizes), and
// checked field by field when the backward is handed them. See docs/math.md ("What each configuration keeps").
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/core/TensorOptions.h>

#include <string>
#include <vector>

#include "chain.h"
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
  int64_t aux = 0;     // entries of each aux tensor (0: no aux tensors)
};
SavedCounts saved_counts(const Config& cfg, const Plan& plan, int64_t n_steps);

// A tensor's full description: sizes, strides (elements) and dtype.
struct TensorSpec {
  std::vector<c10::SymInt> sizes, strides;
  at::ScalarType dtype;
};

// states: (n, B, C, H, W) in channels_last (a (n, B, H, W, C) block, permuted). Full storage keeps what the
//         backward's first convolutions read, in the convolution dtype (the state dtype when run 0 of a chain
//         stands between the state and its first convolution); checkpoints and memory="reversible" keep the
//         running states the backward restarts from, in the state dtype (the same unless mixed).
// aux:    one tensor per kept slot of the plan (chain.h), each with one entry per evaluation:
//         Mask:  (n_aux, ceil(B*H*W*width / 8)) uint8 -- per row, the signs of one evaluation's activation input,
//                bit t of byte j being element 8j + t in channels_last memory order;
//         Value: (n_aux, B, width, H, W) channels_last like the states, the convolution dtype;
//         Pre:   (n_aux, B, H, W, width) contiguous -- the run's input per pixel, the convolution dtype;
//         Stats: (n_aux, B, groups, 2) contiguous -- a group norm's mean and 1 / std, float (double for double);
//         none at all when nothing is kept (n_aux = 0). A preset keeps at most one slot.
TensorSpec states_spec(const Config& cfg, const Plan& plan, const Dims& d, Dtypes dtypes);
std::vector<TensorSpec> aux_specs(const Config& cfg, const Plan& plan, const Dims& d, Dtypes dtypes);
at::ScalarType states_dtype(const Config& cfg, const Plan& plan, Dtypes dtypes);
at::ScalarType stats_dtype(Dtypes dtypes);
// n entries of those layouts, for the backward's own scratch (replayed segments, the reversible walk).
TensorSpec state_stack_spec(int64_t n, const Dims& d, at::ScalarType dtype);
TensorSpec state_stack_spec(int64_t n, const Dims& d, at::ScalarType dtype, const c10::SymInt& width);
TensorSpec slot_stack_spec(const SlotSpec& slot, int64_t n, const Dims& d, Dtypes dtypes);
std::vector<TensorSpec> aux_stack_specs(const Plan& plan, int64_t n, const Dims& d, Dtypes dtypes);

// A tensor of the spec (CPU: served by the buffer pool, see cpu/buffer_pool.h); one per spec.
at::Tensor allocate(const TensorSpec& spec, const at::TensorOptions& options);
std::vector<at::Tensor> allocate(const std::vector<TensorSpec>& specs, const at::TensorOptions& options);

// Raises a clear error naming `name` unless t matches spec (sizes; strides of every dimension longer than 1;
// dtype) and is on `device`. `what` says what the tensor should be.
void check_matches(const at::Tensor& t, const TensorSpec& spec, const c10::Device& device, const char* name,
                   const char* what);

// Bytes of bit-packed mask for n elements.
inline int64_t mask_bytes(int64_t n) { return (n + 7) / 8; }

}  // namespace contres
