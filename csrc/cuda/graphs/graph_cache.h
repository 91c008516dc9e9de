// CUDA graphs of whole op calls: the N-step forward (or backward) captured once per key, then replayed, so that
// a call costs one launch of the host instead of several per step (small shapes are bound by the host: every
// cuDNN call costs 70-150 us of CPU time, more than its kernels).
//
// A forward instance owns static inputs (x in channels_last, the kernels, the biases), static outputs (u_N, the
// saved states and aux), and the graph that computes them (capture.h). Replaying costs a copy of the inputs in
// and of u_N out; the states and aux are handed to the caller as they are, so an instance is busy until the
// caller (autograd) has let go of them, and a second block of the same shape gets an instance of its own. The
// backward of an instance's forward is captured on that instance and replays from the same states in place.
//
// Bounded (cuda_caches.h): at most max_keys keys and max_instances instances, least recently used evicted first
// (never an instance a call is using or whose outputs a caller holds), and kMaxInstancesPerKey per key.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <optional>
#include <string>
#include <tuple>

namespace contres {
namespace cuda_graphs {

constexpr size_t kMaxInstancesPerKey = 4;

using ForwardBody = std::function<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias)>;
using BackwardBody = std::function<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias)>;

// The key of a call: `config` (everything of the call but the data: configuration, h, path) with x's, weight's
// and bias's sizes, strides, dtype and device, and the precision switches (precision.h).
std::string key_of(const std::string& config, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// The forward through a graph for `key`, or nothing when no graph can serve it now: the caller is capturing, the
// problem is empty, every instance of the key is busy and no room can be made, capture failed once for this key,
// or this is the key's first call, which runs plainly to warm cuDNN up.
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> forward(const std::string& key, const at::Tensor& x,
                                                                      const at::Tensor& weight,
                                                                      const at::Tensor& bias,
                                                                      const ForwardBody& body);

// The backward through the graph of the forward instance whose states and aux these are, or nothing (the states
// did not come from a graph, or this is the instance's first backward, which runs plainly as warm-up).
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& states, const at::Tensor& aux, const BackwardBody& body);

}  // namespace cuda_graphs
}  // namespace contres
