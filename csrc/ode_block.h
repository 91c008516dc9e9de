// The fused ODE-block ops: the whole N-step forward and the whole exact discrete adjoint, one call each, for
// every method (euler, rk4, leapfrog). Implemented in driver/; what they keep is saved.h's contract.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>
#include <vector>

namespace contres {

// weight / bias: the kernels (rows, C, C, k, k) and biases (rows, C) at the method's stage times (rows = N, or
// 2N + 1 for rk4); h = T / N. checkpoint = 0 keeps every state and aux for the backward; s > 0 keeps every s-th
// state and the backward recomputes each segment; memory = "reversible" (leapfrog) keeps u_{N-1} and u_N only.
// memory = "none" keeps nothing (inference: each state is written over one before it) and has no backward.
// interp = "constant" or "linear": weight (M, C, C, k, k) and bias (M, C) are the controls instead, interpolated
// inside the op at the stage times of n_steps steps (docs/math.md section 1), and the backward returns their
// gradients; "none" (n_steps = 0, or the count the rows give) takes the kernels as they are.
// Every state-sized tensor inside is channels_last; u_N and dL/dx keep x's own layout. conv_dtype (CPU, x float32):
// bfloat16 or float16 for mixed precision -- the state, u_N, dL/dx and the weight gradients stay float32, the
// weights are cast once per call and the convolutions run in conv_dtype (what torch.autocast does per op), and
// full storage keeps the convolution inputs in it (saved.h).
// layer: "single", "double_sym", or a chain of stages joined by commas (chain.h, docs/math.md section 8): then
// weight and bias are the first conv's, `params` the chain's other parameters in order (each with the same rows),
// norm_eps (None: the norm's default), norm_groups (0: min(32, width)), norm_affine and time_channel its options.
// Returns (u_N, saved states, saved aux: one tensor per kept slot); u_0 is x itself and is not copied.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> ode_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double h, c10::string_view layer,
    c10::string_view activation, int64_t checkpoint, c10::string_view norm, c10::string_view method,
    c10::string_view memory, c10::string_view interp, int64_t n_steps, std::optional<at::ScalarType> conv_dtype,
    std::optional<at::TensorList> params, std::optional<double> norm_eps, int64_t norm_groups, bool norm_affine, bool time_channel);

// Returns (dL/dx, dL/dweight, dL/dbias, drift, dL/dparams): the gradients for the parameters as given (the kernels
// at the stage times, or the controls), and, for memory = "reversible", max |u_0 recomputed - x| / max |x| (0
// otherwise), a 0-d tensor of x's dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> ode_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& states, at::TensorList aux, double h, c10::string_view layer, c10::string_view activation,
    int64_t checkpoint, c10::string_view norm, c10::string_view method, c10::string_view memory,
    c10::string_view interp, int64_t n_steps, std::optional<at::ScalarType> conv_dtype,
    std::optional<at::TensorList> params,
    std::optional<double> norm_eps, int64_t norm_groups, bool norm_affine, bool time_channel);

// The same checks and output metadata on meta tensors (symbolic sizes under torch.compile / torch.export).
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> ode_forward_meta(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double h, c10::string_view layer,
    c10::string_view activation, int64_t checkpoint, c10::string_view norm, c10::string_view method,
    c10::string_view memory, c10::string_view interp, int64_t n_steps, std::optional<at::ScalarType> conv_dtype,
    std::optional<at::TensorList> params, std::optional<double> norm_eps, int64_t norm_groups, bool norm_affine, bool time_channel);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> ode_backward_meta(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& states, at::TensorList aux, double h, c10::string_view layer, c10::string_view activation,
    int64_t checkpoint, c10::string_view norm, c10::string_view method, c10::string_view memory,
    c10::string_view interp, int64_t n_steps, std::optional<at::ScalarType> conv_dtype,
    std::optional<at::TensorList> params,
    std::optional<double> norm_eps, int64_t norm_groups, bool norm_affine, bool time_channel);

}  // namespace contres
