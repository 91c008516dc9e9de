// CUDA entry points of the elementwise passes (dtype dispatch onto the launchers of elementwise.cuh) and the
// mask packing used by the fused cuDNN graphs, which read and write one byte per element.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>

#include "elementwise.cuh"

namespace contres {
namespace cuda_detail {
CONTRES_ELEMENTWISE_LAUNCHERS(extern, float)
CONTRES_ELEMENTWISE_LAUNCHERS(extern, double)
CONTRES_ELEMENTWISE_LAUNCHERS(extern, c10::Half)
CONTRES_ELEMENTWISE_LAUNCHERS(extern, c10::BFloat16)

namespace {

__global__ void pack_mask_kernel(const uint8_t* __restrict__ bytes, uint8_t* __restrict__ bits, int64_t n) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; 8 * j < n; j += int64_t(gridDim.x) * blockDim.x) {
    unsigned b = 0;
#pragma unroll
    for (int t = 0; t < 8; ++t)
      if (8 * j + t < n && bytes[8 * j + t] != 0) b |= 1u << t;
    bits[j] = static_cast<uint8_t>(b);
  }
}

__global__ void unpack_mask_kernel(const uint8_t* __restrict__ bits, uint8_t* __restrict__ bytes, int64_t n) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; 8 * j < n; j += int64_t(gridDim.x) * blockDim.x) {
    const unsigned b = bits[j];
#pragma unroll
    for (int t = 0; t < 8; ++t)
      if (8 * j + t < n) bytes[8 * j + t] = static_cast<uint8_t>((b >> t) & 1u);
  }
}

}  // namespace
}  // namespace cuda_detail

void forward_pass_cuda(const ForwardPass& p) {
  TORCH_CHECK(!p.comb.out_low.defined(), "contres: internal error: mixed precision runs on the CPU only");
  if (p.z.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(p.z.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.z.scalar_type(), "contres_forward_pass_cuda",
                                  [&] { cuda_detail::forward_launch<scalar_t>(p); });
}

bool gate_pass_cuda(const GatePass& p) {
  TORCH_CHECK(!p.sum_out.defined() || p.mu.defined(), "contres: internal error: the gate's running sum adds mu");
  if (p.lam.numel() == 0) return false;
  const c10::cuda::CUDAGuard guard(p.lam.device());
  bool wrote_bias = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.lam.scalar_type(), "contres_gate_pass_cuda",
                                  [&] { wrote_bias = cuda_detail::gate_launch<scalar_t>(p); });
  return wrote_bias;
}

void pack_mask_cuda(const at::Tensor& bytes, const at::Tensor& bits) {
  const int64_t n = bytes.numel();
  if (n == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  cuda_detail::pack_mask_kernel<<<cuda_detail::grid_for((n + 7) / 8, cuda_detail::kThreads), cuda_detail::kThreads, 0,
                                  stream>>>(bytes.const_data_ptr<uint8_t>(), bits.mutable_data_ptr<uint8_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void unpack_mask_cuda(const at::Tensor& bits, const at::Tensor& bytes) {
  const int64_t n = bytes.numel();
  if (n == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  cuda_detail::unpack_mask_kernel<<<cuda_detail::grid_for((n + 7) / 8, cuda_detail::kThreads), cuda_detail::kThreads,
                                    0, stream>>>(bits.const_data_ptr<uint8_t>(), bytes.mutable_data_ptr<uint8_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace contres
