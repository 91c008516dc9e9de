// The fused ODE-block ops: the whole N-step forward and the whole exact discrete adjoint, one call each.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <tuple>

namespace contres {

// Every state-sized tensor inside the ops, the saved states included, is channels_last; the x-shaped outputs
// (u_N, dL/dx) keep x's own layout.

// weight: per-step kernels (N, C, C, k, k); bias: per-step biases (N, C); h = T / N.
// checkpoint = 0 keeps every state and the per-step aux for the backward; checkpoint = s > 0 keeps only
// u_s, u_2s, ... and the backward recomputes each segment.
// norm: "none", or "tv" (z / sqrt(sum_c z^2 + kTvEps) per pixel before the activation).
// Returns (u_N, saved states, saved aux); u_0 is x itself and is not copied.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ode_forward(const at::Tensor& x, const at::Tensor& weight,
                                                           const at::Tensor& bias, double h, c10::string_view layer,
                                                           c10::string_view activation, int64_t checkpoint,
                                                           c10::string_view norm);

// Returns (dL/dx, dL/dweight, dL/dbias) for the per-step weight and bias.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ode_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                            const at::Tensor& weight, const at::Tensor& bias,
                                                            const at::Tensor& states, const at::Tensor& aux, double h,
                                                            c10::string_view layer, c10::string_view activation,
                                                            int64_t checkpoint, c10::string_view norm);

}  // namespace contres
