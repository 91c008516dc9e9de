// contres' own direct convolution on the CPU (contres.set_cpu_paths(conv="own")): same padding, stride 1, odd
// kernel sizes, channels_last float32, on ATen's brgemm microkernel (at::native::cpublas::brgemm, oneDNN's). Each
// image is zero-padded into a per-thread buffer of (H + 2p) x (W + 2p) pixels, and its output rows are computed in
// that padded row layout as k^2 accumulating GEMMs, one per tap, each over consecutive padded pixels; the junk
// columns between rows are dropped as the rows are stored. The data gradient is the same convolution with the
// kernel flipped and its channels swapped; the weight gradient is one GEMM per tap and image, summed over the images
// in order (deterministic whatever the threads).
//
// Measured against ATen's channels_last convolution (oneDNN) on the AVX2-only EPYC: 0.8-0.9x (bench/cpu_conv.py),
// so "auto" keeps ATen's there. It is the base for the convolution with the step as its epilogue and the bf16 AMX
// kernels (issue 24), where the passes around the convolution cost as much as it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace contres {
namespace cpu {

// Whether the own convolution serves these operands: float32 on the CPU, x (B, C, H, W), K (Cout, C, k, k), odd k.
bool own_conv_supports(const at::Tensor& x, const at::Tensor& K);

// conv(x, K) + b (b may be undefined), channels_last.
at::Tensor own_conv2d(const at::Tensor& x, const at::Tensor& K, const at::Tensor& b);
// convT(g, K): the data gradient of conv(., K) under g, channels_last.
at::Tensor own_conv_transpose2d(const at::Tensor& g, const at::Tensor& K);
// dL/dK of conv(x, K) under g, (Cout, C, k, k) contiguous.
at::Tensor own_conv_weight_grad(const at::Tensor& g, const at::Tensor& x, const at::Tensor& K);

}  // namespace cpu
}  // namespace contres
