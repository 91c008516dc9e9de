// Pieces shared by the CUDA passes: 8-element chunks loaded and stored with one vector access when aligned, a
// block reduction, and grid sizing.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include <cuda_runtime.h>

#include "../../kernels.h"

namespace contres {
namespace cuda_detail {

template <typename T>
struct alignas(8 * sizeof(T)) Pack8 {
  T v[8];
};

template <typename T>
bool aligned8(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % (8 * sizeof(T)) == 0;
}

// Elements [i0, i0 + cnt) of p into opmath registers (lanes past cnt are zero); one vector load when vec.
template <typename T, typename O>
__device__ __forceinline__ void load8(const T* p, int64_t i0, int cnt, bool vec, O (&out)[8]) {
  if (vec) {
    const Pack8<T> pack = *reinterpret_cast<const Pack8<T>*>(p + i0);
#pragma unroll
    for (int t = 0; t < 8; ++t) out[t] = static_cast<O>(pack.v[t]);
  } else {
#pragma unroll
    for (int t = 0; t < 8; ++t) out[t] = t < cnt ? static_cast<O>(p[i0 + t]) : O(0);
  }
}

template <typename T, typename O>
__device__ __forceinline__ void store8(T* p, int64_t i0, int cnt, bool vec, const O (&in)[8]) {
  if (vec) {
    Pack8<T> pack;
#pragma unroll
    for (int t = 0; t < 8; ++t) pack.v[t] = static_cast<T>(in[t]);
    *reinterpret_cast<Pack8<T>*>(p + i0) = pack;
  } else {
#pragma unroll
    for (int t = 0; t < 8; ++t)
      if (t < cnt) p[i0 + t] = static_cast<T>(in[t]);
  }
}

constexpr int kThreads = 256;

// Sum of v over the block, valid in thread 0; blockDim.x is a multiple of 32 and at most kThreads.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  __shared__ T warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x + 31) / 32 ? warp_sums[threadIdx.x] : T(0);
  if (warp == 0)
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// An optional operand's data pointer (null when undefined).
template <typename T>
const T* cptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}
template <typename T>
T* mptr(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

// A Combination (kernels.h) into a kernel's arguments of the same names: pointers (x0, x1 only with out) and
// coefficients.
template <typename scalar_t, typename Args>
void set_combination(Args& a, const Combination& c) {
  const bool out = c.out.defined();
  a.x0 = out ? cptr<scalar_t>(c.x0) : nullptr;
  a.x1 = out ? cptr<scalar_t>(c.x1) : nullptr;
  a.y0 = cptr<scalar_t>(c.y0);
  a.out = mptr<scalar_t>(c.out);
  a.out2 = mptr<scalar_t>(c.out2);
  a.c0 = c.c0, a.c1 = c.c1, a.alpha = c.alpha, a.beta = c.beta;
}

inline int64_t grid_for(int64_t work, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, int64_t(1) << 20));
}

}  // namespace cuda_detail
}  // namespace contres
