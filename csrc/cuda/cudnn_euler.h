// Euler's steps on the fused cuDNN graphs (cudnn_step/fused_step.h), plugged into the device-agnostic driver at
// two points: Stages::forward runs an evaluation as graphs when they serve it, and make_euler_adjoint hands the
// backward to the adjoint here. The forward step is one graph (the single layer) or two (double_sym); the
// backward forms the data gradient of step k + 1 in the graph of step k's gate. Whatever a graph cannot run
// falls back to ATen's convolutions and the elementwise passes, step by step, with the same results to rounding.
#pragma once

#ifdef CONTRES_WITH_CUDNN_FUSION

#include <ATen/core/Tensor.h>

#include <memory>

#include "../driver/methods.h"

namespace contres {

// Euler's update comb.out = U + comb.alpha f(U) as fused graphs, with the aux into aux_out when defined. False,
// having written nothing, when the graphs do not serve this problem or this combination (the other methods').
bool cudnn_euler_forward(const Problem& p, const at::Tensor& U, const at::Tensor& K, const at::Tensor& b,
                         const Combination& comb, const at::Tensor& aux_out);

// Euler's adjoint on the fused graphs, or null when they do not serve this problem.
std::unique_ptr<Adjoint> make_cudnn_euler_adjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads,
                                                  const at::Tensor& grad_out);

}  // namespace contres

#endif  // CONTRES_WITH_CUDNN_FUSION
