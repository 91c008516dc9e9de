// The two fused elementwise passes of the ODE block, one implementation per device. Everything else in a
// step (the convolutions) goes to ATen, i.e. oneDNN on the CPU and cuDNN on CUDA; see ode_block.cpp.
//
// The passes see a contiguous 4-D tensor as size(0) * size(1) planes of size(2) * size(3) elements; the
// driver hands them its channels_last data as one flat plane of B*C*H*W elements in memory order (all operands
// share the layout, and elementwise work does not care which it is). Masks are bit-packed per plane (bit t of
// byte j is element 8j+t of the plane), so no byte is shared between planes.
#pragma once

#include <ATen/core/Tensor.h>

#include "activations.h"

namespace contres {

// Forward of the single layer: u_next = u + h * act(z).
//   aux_out (kind Mask: uint8, mask_bytes(plane) per plane; kind Value: act(z) like u) is written when defined;
//   u_next may be undefined when only the aux is wanted (recomputation in the checkpointed backward).
void single_update_cpu(const at::Tensor& u, const at::Tensor& z, double h, Act act, Aux aux_kind,
                       const at::Tensor& u_next, const at::Tensor& aux_out);

// Adjoint gate of one step:
//   v = lam + gi (just lam when gi is undefined), written to v_out when v_out is defined;
//   g = scale * act'(z) * v, written to g_out, with act'(z) taken from aux (see Aux).
// v_out may alias gi and g_out may alias lam: every element is read before it is written.
void adjoint_gate_cpu(const at::Tensor& lam, const at::Tensor& gi, const at::Tensor& aux, Aux aux_kind, Act act,
                      double scale, const at::Tensor& v_out, const at::Tensor& g_out);

// Norm "tv" (cpu/tv_kernels.cpp), on flat channels_last data of `channels` channels: per pixel, n = z / r with
// r = sqrt(sum_c z^2 + kTvEps), and a = act(n).
// Forward: the single layer (u defined) writes u_next = u + h * a, double_sym (u undefined) writes a_out = a
//   (a_out may alias z); z_keep, when defined, gets a copy of z (what the backward keeps).
void tv_forward_cpu(const at::Tensor& z, int64_t channels, Act act, const at::Tensor& u, double h,
                    const at::Tensor& u_next, const at::Tensor& a_out, const at::Tensor& z_keep);
// Adjoint gate: v = lam + gi (lam when gi is undefined; to v_out when defined), w = scale * act'(n) * v, and
//   g = dL/dz = (w - n (n . w)) / r to g_out; a_out = act(n) when defined. v_out may alias gi, g_out lam.
void tv_adjoint_gate_cpu(const at::Tensor& lam, const at::Tensor& gi, const at::Tensor& z, int64_t channels,
                         Act act, double scale, const at::Tensor& v_out, const at::Tensor& g_out,
                         const at::Tensor& a_out);

#ifdef CONTRES_WITH_CUDA
void single_update_cuda(const at::Tensor& u, const at::Tensor& z, double h, Act act, Aux aux_kind,
                        const at::Tensor& u_next, const at::Tensor& aux_out);
// As adjoint_gate_cpu, on flat channels_last data of `channels` channels; also reduces the bias gradient
// bias_grad (C) = sum over (B, H, W) of g, deterministically, where the layout allows (C % 8 == 0). Returns
// whether it wrote bias_grad.
bool adjoint_gate_cuda(const at::Tensor& lam, const at::Tensor& gi, const at::Tensor& aux, Aux aux_kind, Act act,
                       double scale, const at::Tensor& v_out, const at::Tensor& g_out, const at::Tensor& bias_grad,
                       int64_t channels);
#endif

// Bytes of bit-packed mask per plane of hw elements.
inline int64_t mask_bytes(int64_t hw) { return (hw + 7) / 8; }

}  // namespace contres
