// CUDA entry points of the fused passes (dtype dispatch onto the launchers of kernels.cuh) and the CUDA
// registrations of the ops. The step loop itself is the device-agnostic driver of ode_block.cpp.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ode_block.h"
#include "kernels.cuh"

namespace contres {
namespace cuda_detail {
#define CONTRES_DECLARE_LAUNCHERS(T)                                                                              \
  extern template void single_update_launch<T>(const at::Tensor&, const at::Tensor&, double, Act, Aux,           \
                                               const at::Tensor&, const at::Tensor&);                            \
  extern template bool adjoint_gate_launch<T>(const at::Tensor&, const at::Tensor&, const at::Tensor&, Aux, Act,  \
                                              double, const at::Tensor&, const at::Tensor&, const at::Tensor&,   \
                                              int64_t);
CONTRES_DECLARE_LAUNCHERS(float)
CONTRES_DECLARE_LAUNCHERS(double)
CONTRES_DECLARE_LAUNCHERS(c10::Half)
CONTRES_DECLARE_LAUNCHERS(c10::BFloat16)
}  // namespace cuda_detail

void single_update_cuda(const at::Tensor& u, const at::Tensor& z, double h, Act act, Aux aux_kind,
                        const at::Tensor& u_next, const at::Tensor& aux_out) {
  const c10::cuda::CUDAGuard guard(u.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u.scalar_type(), "contres_single_update_cuda", [&] {
    cuda_detail::single_update_launch<scalar_t>(u, z, h, act, aux_kind, u_next, aux_out);
  });
}

bool adjoint_gate_cuda(const at::Tensor& lam, const at::Tensor& gi, const at::Tensor& aux, Aux aux_kind, Act act,
                       double scale, const at::Tensor& v_out, const at::Tensor& g_out, const at::Tensor& bias_grad,
                       int64_t channels) {
  TORCH_CHECK(v_out.defined() == gi.defined(), "contres: adjoint_gate writes v exactly when gi is given");
  const c10::cuda::CUDAGuard guard(lam.device());
  bool wrote_bias = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, lam.scalar_type(), "contres_adjoint_gate_cuda", [&] {
    wrote_bias = cuda_detail::adjoint_gate_launch<scalar_t>(lam, gi, aux, aux_kind, act, scale, v_out, g_out,
                                                            bias_grad, channels);
  });
  return wrote_bias;
}

TORCH_LIBRARY_IMPL(contres, CUDA, m) {
  m.impl("ode_forward", &ode_forward);  // the device-agnostic driver; it sets the device itself
  m.impl("ode_backward", &ode_backward);
}

}  // namespace contres
