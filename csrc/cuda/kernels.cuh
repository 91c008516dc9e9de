// Device templates of the fused passes and their typed launchers. Each kernels_<dtype>.cu file instantiates
// the launchers for its dtypes, so nvcc compiles the dtypes in parallel; kernels.cu dispatches on dtype.
// One thread handles one 8-element chunk (one mask byte); complete, aligned chunks use 8-wide vector loads.
// The bias gradient is reduced without atomics, in a fixed order, so it is deterministic.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <type_traits>

#include <cuda_runtime.h>

#include "../kernels.h"

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

// Loads elements [i0, i0 + cnt) of a plane-aligned array into opmath registers.
template <typename T, bool kVec, typename O>
__device__ __forceinline__ void load8(const T* p, int64_t i0, int cnt, O (&out)[8]) {
  if constexpr (kVec) {
    const Pack8<T> pack = *reinterpret_cast<const Pack8<T>*>(p + i0);
#pragma unroll
    for (int t = 0; t < 8; ++t) out[t] = static_cast<O>(pack.v[t]);
  } else {
#pragma unroll
    for (int t = 0; t < 8; ++t) out[t] = t < cnt ? static_cast<O>(p[i0 + t]) : O(0);
  }
}

template <typename T, bool kVec, typename O>
__device__ __forceinline__ void store8(T* p, int64_t i0, int cnt, const O (&in)[8]) {
  if constexpr (kVec) {
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

struct ChunkIndex {
  int64_t elem;  // first element of the chunk
  int64_t byte;  // its mask byte
  int cnt;       // elements in the chunk (8 except at a plane's end)
};

__device__ __forceinline__ ChunkIndex chunk_index(int64_t chunk, int64_t hw, int64_t mbytes) {
  const int64_t plane = chunk / mbytes, j = chunk % mbytes;
  const int64_t left = hw - 8 * j;
  return {plane * hw + 8 * j, chunk, static_cast<int>(left < 8 ? left : 8)};
}

template <typename scalar_t, Act A, bool kOut, bool kMask, bool kValue, bool kVec>
__global__ void single_update_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ z,
                                     scalar_t* __restrict__ out, uint8_t* __restrict__ mask,
                                     scalar_t* __restrict__ val, int64_t chunks, int64_t hw, int64_t mbytes,
                                     at::opmath_type<scalar_t> h) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t chunk = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; chunk < chunks;
       chunk += int64_t(gridDim.x) * blockDim.x) {
    const ChunkIndex c = chunk_index(chunk, hw, mbytes);
    opmath_t zr[8], a[8];
    load8<scalar_t, kVec>(z, c.elem, c.cnt, zr);
#pragma unroll
    for (int t = 0; t < 8; ++t) a[t] = Activation<A>::f(zr[t]);
    if constexpr (kValue) store8<scalar_t, kVec>(val, c.elem, c.cnt, a);
    if constexpr (kOut) {
      opmath_t ur[8];
      load8<scalar_t, kVec>(u, c.elem, c.cnt, ur);
#pragma unroll
      for (int t = 0; t < 8; ++t) ur[t] += h * a[t];
      store8<scalar_t, kVec>(out, c.elem, c.cnt, ur);
    }
    if constexpr (kMask) {
      unsigned bits = 0;
#pragma unroll
      for (int t = 0; t < 8; ++t) bits |= static_cast<unsigned>(t < c.cnt && Activation<A>::mask_bit(zr[t])) << t;
      mask[c.byte] = static_cast<uint8_t>(bits);
    }
  }
}

constexpr int kGateThreads = 256;

// One chunk of the adjoint gate: g = scale * act' * (lam [+ gi]), stored and returned in g (lanes past c.cnt
// are zero); v written when gi is given.
template <typename scalar_t, Act A, Aux K, bool kGi, bool kVec, typename opmath_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ void gate_chunk(const ChunkIndex& c, const scalar_t* lam, const scalar_t* gi,
                                           const uint8_t* mask, const scalar_t* val, scalar_t* v_out, scalar_t* g_out,
                                           opmath_t scale, opmath_t (&g)[8]) {
  opmath_t v[8], d[8];
  load8<scalar_t, kVec>(lam, c.elem, c.cnt, v);
  if constexpr (kGi) {
    opmath_t add[8];
    load8<scalar_t, kVec>(gi, c.elem, c.cnt, add);
#pragma unroll
    for (int t = 0; t < 8; ++t) v[t] += add[t];
    store8<scalar_t, kVec>(v_out, c.elem, c.cnt, v);
  }
  if constexpr (K == Aux::Mask) {
    const unsigned bits = mask[c.byte];
#pragma unroll
    for (int t = 0; t < 8; ++t) d[t] = Activation<A>::template df_sign<opmath_t>((bits >> t) & 1u);
  } else if constexpr (K == Aux::Value) {
    load8<scalar_t, kVec>(val, c.elem, c.cnt, d);
#pragma unroll
    for (int t = 0; t < 8; ++t) d[t] = Activation<A>::df_value(d[t]);
  } else {
#pragma unroll
    for (int t = 0; t < 8; ++t) d[t] = opmath_t(1);
  }
#pragma unroll
  for (int t = 0; t < 8; ++t) g[t] = t < c.cnt ? scale * d[t] * v[t] : opmath_t(0);
  store8<scalar_t, kVec>(g_out, c.elem, c.cnt, g);
}

// Sum of v over the block, valid in thread 0; blockDim.x is a multiple of 32 and at most kGateThreads.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  __shared__ T warp_sums[kGateThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x + 31) / 32 ? warp_sums[threadIdx.x] : T(0);
  if (warp == 0)
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Without the bias reduction (the driver then reduces with ATen): a grid-stride loop over all chunks.
template <typename scalar_t, Act A, Aux K, bool kGi, bool kVec>
__global__ void adjoint_gate_flat_kernel(const scalar_t* __restrict__ lam, const scalar_t* gi,
                                         const uint8_t* __restrict__ mask, const scalar_t* __restrict__ val,
                                         scalar_t* v_out, scalar_t* g_out, int64_t chunks, int64_t hw, int64_t mbytes,
                                         at::opmath_type<scalar_t> scale) {
  at::opmath_type<scalar_t> g[8];
  for (int64_t chunk = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; chunk < chunks;
       chunk += int64_t(gridDim.x) * blockDim.x)
    gate_chunk<scalar_t, A, K, kGi, kVec>(chunk_index(chunk, hw, mbytes), lam, gi, mask, val, v_out, g_out, scale, g);
}

// channels_last with C % 8 == 0: chunk j holds channels (8j) % C .. +7. The grid has T threads with 8T % C == 0,
// so every chunk a thread visits holds the same 8 channels; it sums them in registers and writes its 8 partial
// sums to partial[tid * 8 + lane]. channels_last_bias_kernel then reduces them in a fixed order.
template <typename scalar_t, Act A, Aux K, bool kGi>
__global__ void adjoint_gate_channels_last_kernel(const scalar_t* __restrict__ lam, const scalar_t* gi,
                                                  const uint8_t* __restrict__ mask, const scalar_t* __restrict__ val,
                                                  scalar_t* v_out, scalar_t* g_out,
                                                  at::opmath_type<scalar_t>* __restrict__ partial, int64_t chunks,
                                                  at::opmath_type<scalar_t> scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, threads = int64_t(gridDim.x) * blockDim.x;
  opmath_t acc[8] = {}, g[8];
  for (int64_t chunk = tid; chunk < chunks; chunk += threads) {
    gate_chunk<scalar_t, A, K, kGi, true>(ChunkIndex{8 * chunk, chunk, 8}, lam, gi, mask, val, v_out, g_out, scale,
                                          g);
#pragma unroll
    for (int t = 0; t < 8; ++t) acc[t] += g[t];
  }
#pragma unroll
  for (int t = 0; t < 8; ++t) partial[tid * 8 + t] = acc[t];
}

// One block per channel c: bias_grad[c] = sum of partial[tid * 8 + c % 8] over the threads tid whose chunks
// hold channel c, i.e. tid = c / 8 (mod C / 8).
template <typename scalar_t>
__global__ void channels_last_bias_kernel(const at::opmath_type<scalar_t>* __restrict__ partial,
                                          scalar_t* __restrict__ out, int64_t threads, int64_t C) {
  const int64_t c = blockIdx.x, groups = C / 8;
  at::opmath_type<scalar_t> acc = 0;
  for (int64_t tid = c / 8 + threadIdx.x * groups; tid < threads; tid += int64_t(blockDim.x) * groups)
    acc += partial[tid * 8 + c % 8];
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[c] = static_cast<scalar_t>(acc);
}

inline int64_t grid_for(int64_t work, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, int64_t(1) << 20));
}

template <typename scalar_t>
void single_update_launch(const at::Tensor& u, const at::Tensor& z, double h, Act act, Aux aux_kind,
                          const at::Tensor& u_next, const at::Tensor& aux_out) {
  const bool out = u_next.defined(), mask = aux_kind == Aux::Mask && aux_out.defined(),
             value = aux_kind == Aux::Value && aux_out.defined();
  if (!out && !mask && !value) return;
  const int64_t hw = u.size(2) * u.size(3), mbytes = mask_bytes(hw);
  const int64_t chunks = u.size(0) * u.size(1) * mbytes;
  constexpr int threads = 256;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const scalar_t* up = u.const_data_ptr<scalar_t>();
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  scalar_t* outp = out ? u_next.mutable_data_ptr<scalar_t>() : nullptr;
  uint8_t* maskp = mask ? aux_out.mutable_data_ptr<uint8_t>() : nullptr;
  scalar_t* valp = value ? aux_out.mutable_data_ptr<scalar_t>() : nullptr;
  const bool vec = hw % 8 == 0 && aligned8<scalar_t>(up) && aligned8<scalar_t>(zp) && aligned8<scalar_t>(outp) &&
                   aligned8<scalar_t>(valp);
  const auto hh = static_cast<at::opmath_type<scalar_t>>(h);
  dispatch_activation(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    auto launch = [&](auto o, auto m, auto v, auto vec_tag) {
      single_update_kernel<scalar_t, A, decltype(o)::value, decltype(m)::value, decltype(v)::value,
                           decltype(vec_tag)::value>
          <<<grid_for(chunks, threads), threads, 0, stream>>>(up, zp, outp, maskp, valp, chunks, hw, mbytes, hh);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    auto by_vec = [&](auto o, auto m, auto v) {
      if (vec) launch(o, m, v, std::true_type{});
      else launch(o, m, v, std::false_type{});
    };
    using T_ = std::true_type;
    using F_ = std::false_type;
    if (out && mask) by_vec(T_{}, T_{}, F_{});
    else if (out && value) by_vec(T_{}, F_{}, T_{});
    else if (out) by_vec(T_{}, F_{}, F_{});
    else if (mask) by_vec(F_{}, T_{}, F_{});
    else by_vec(F_{}, F_{}, T_{});
  });
}

// The tensors are flat channels_last data of `channels` channels (the ops work in channels_last, see
// kLayout in ode_block.cpp). Returns whether bias_grad was written: it is reduced in the pass when C % 8 == 0 and
// the data are 8-aligned, else left to the caller.
template <typename scalar_t>
bool adjoint_gate_launch(const at::Tensor& lam, const at::Tensor& gi, const at::Tensor& aux, Aux aux_kind, Act act,
                         double scale, const at::Tensor& v_out, const at::Tensor& g_out, const at::Tensor& bias_grad,
                         int64_t channels) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t hw = lam.size(2) * lam.size(3), mbytes = mask_bytes(hw);
  const int64_t chunks = lam.size(0) * lam.size(1) * mbytes;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const scalar_t* lamp = lam.const_data_ptr<scalar_t>();
  const scalar_t* gip = gi.defined() ? gi.const_data_ptr<scalar_t>() : nullptr;
  const uint8_t* maskp = aux_kind == Aux::Mask ? aux.const_data_ptr<uint8_t>() : nullptr;
  const scalar_t* valp = aux_kind == Aux::Value ? aux.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* vp = v_out.defined() ? v_out.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gp = g_out.mutable_data_ptr<scalar_t>();
  const bool vec = hw % 8 == 0 && aligned8<scalar_t>(lamp) && aligned8<scalar_t>(gip) && aligned8<scalar_t>(valp) &&
                   aligned8<scalar_t>(vp) && aligned8<scalar_t>(gp);
  const auto s = static_cast<opmath_t>(scale);
  const bool fuse_bias = bias_grad.defined() && channels % 8 == 0 && vec;

  // The fused-bias grid: about two blocks per SM, rounded so that 8 * threads % C == 0.
  int64_t cl_blocks = 0;
  at::Tensor partial;
  if (fuse_bias) {
    int device = 0, sms = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const int64_t groups = channels / 8, step = groups / std::gcd<int64_t>(groups, kGateThreads);
    cl_blocks = std::max<int64_t>(1, std::min<int64_t>(2 * sms, (chunks + kGateThreads - 1) / kGateThreads));
    cl_blocks = (cl_blocks + step - 1) / step * step;
    partial = at::empty({cl_blocks * kGateThreads * 8}, lam.options().dtype(c10::CppTypeToScalarType<opmath_t>::value));
  }
  dispatch_activation(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    auto launch = [&](auto kind, auto with_gi, auto vec_tag) {
      constexpr Aux K = decltype(kind)::value;
      constexpr bool kGi = decltype(with_gi)::value, kVec = decltype(vec_tag)::value;
      if (fuse_bias) {
        adjoint_gate_channels_last_kernel<scalar_t, A, K, kGi><<<cl_blocks, kGateThreads, 0, stream>>>(
            lamp, gip, maskp, valp, vp, gp, partial.mutable_data_ptr<opmath_t>(), chunks, s);
      } else {
        adjoint_gate_flat_kernel<scalar_t, A, K, kGi, kVec><<<grid_for(chunks, kGateThreads), kGateThreads, 0,
                                                              stream>>>(lamp, gip, maskp, valp, vp, gp, chunks, hw,
                                                                        mbytes, s);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    auto by_vec = [&](auto kind, auto with_gi) {
      if (vec) launch(kind, with_gi, std::true_type{});
      else launch(kind, with_gi, std::false_type{});
    };
    auto by_gi = [&](auto kind) {
      if (gip) by_vec(kind, std::true_type{});
      else by_vec(kind, std::false_type{});
    };
    switch (aux_kind) {
      case Aux::Mask: by_gi(std::integral_constant<Aux, Aux::Mask>{}); break;
      case Aux::Value: by_gi(std::integral_constant<Aux, Aux::Value>{}); break;
      default: by_gi(std::integral_constant<Aux, Aux::None>{}); break;
    }
  });
  if (!fuse_bias) return false;
  channels_last_bias_kernel<scalar_t><<<channels, kGateThreads, 0, stream>>>(
      partial.const_data_ptr<opmath_t>(), bias_grad.mutable_data_ptr<scalar_t>(), cl_blocks * kGateThreads, channels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

#define CONTRES_INSTANTIATE_LAUNCHERS(T)                                                                          \
  template void single_update_launch<T>(const at::Tensor&, const at::Tensor&, double, Act, Aux, const at::Tensor&, \
                                        const at::Tensor&);                                                        \
  template bool adjoint_gate_launch<T>(const at::Tensor&, const at::Tensor&, const at::Tensor&, Aux, Act, double,  \
                                       const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);

}  // namespace cuda_detail
}  // namespace contres
