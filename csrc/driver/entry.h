// The plain (uncaptured) bodies of the two ops, for the device-specific entry points that wrap them (the CUDA one
// may replay them from a captured graph, see cuda/entry.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

#include "../saved.h"

namespace contres {

// One op call, parsed and checked.
struct Call {
  Config cfg;
  Interp interp = Interp::None;  // how weight and bias become the kernels at the stage times (driver/controls.h)
  Dims dims;
  Dtypes dtypes;  // the state's (x's) and the convolutions' (conv_dtype): two in mixed precision
  Plan plan;      // the chain's program (chain.h)
  double h = 0;
  bool fused_conv = false;  // CUDA: the fused cuDNN graphs where they can run (see paths.h)
};

using ForwardResult = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>>;  // u_N, states, aux
// dx, dweight, dbias, drift, and the gradients of params
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>>;

ForwardResult forward_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           at::TensorList params, const Call& call);
BackwardResult backward_impl(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& bias, at::TensorList params, const at::Tensor& states,
                             const std::vector<at::Tensor>& aux, const Call& call);

#ifdef CONTRES_WITH_CUDA
ForwardResult cuda_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           at::TensorList params, const Call& call);
BackwardResult cuda_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& bias, at::TensorList params, const at::Tensor& states,
                             const std::vector<at::Tensor>& aux, const Call& call);
#endif

}  // namespace contres
