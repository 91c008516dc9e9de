// CUDA graphs of whole op calls: the N-step forward (or backward) captured once per configuration and shape, then
// replayed, so that a call costs one launch of the host instead of several per step (small shapes are bound by the
// host: every cuDNN call costs 70-150 us of CPU time, more than its kernels).
//
// A forward instance owns static inputs (x in channels_last, the kernels, the biases), static outputs (u_N, the
// saved states and aux), and the graph that computes them. Replaying costs a copy of the inputs in and of u_N out;
// the states and aux are handed to the caller as they are, so an instance is busy until the caller (autograd) has
// let go of them, and a second block of the same shape gets an instance of its own (at most kMaxInstances per key).
// The backward of an instance's forward is captured on that instance and replays from the same states in place.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <optional>
#include <string>
#include <tuple>

namespace contres {
namespace cuda_graphs {

using ForwardBody = std::function<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias)>;
using BackwardBody = std::function<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias)>;

// The forward through a graph for `key` (which must name everything but the data: configuration, sizes, dtype,
// device, h, path), or nothing when no graph can serve it now (the caller is capturing, every instance is busy,
// capture failed once for this key, or this is the key's first call, which runs plainly to warm cuDNN up).
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> forward(const std::string& key, const at::Tensor& x,
                                                                      const at::Tensor& weight,
                                                                      const at::Tensor& bias,
                                                                      const ForwardBody& body);

// The backward through the graph of the forward instance whose states and aux these are, or nothing (the states
// did not come from a graph, or this is the instance's first backward, which runs plainly as warm-up).
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& states, const at::Tensor& aux, const BackwardBody& body);

// Instances held now, and all graphs dropped (their memory returns to PyTorch's caching allocator).
int64_t instances();
void clear();

}  // namespace cuda_graphs
}  // namespace contres
