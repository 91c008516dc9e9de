// Device templates of the forward pass and the adjoint gate (kernels.h) and their typed launchers. One thread
// handles one 8-element chunk (one mask byte); full, aligned chunks use one vector access per operand. The
// optional operands are null pointers, tested uniformly across the grid; only the (activation, aux) pairs of the
// table (config.h) are instantiated, per dtype in elementwise_<dtype>.cu. The bias gradient is reduced without
// atomics, in a fixed order, so it is deterministic.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <numeric>
#include <type_traits>

#include "../../kernels.h"
#include "common.cuh"

namespace contres {
namespace cuda_detail {

template <typename scalar_t>
struct ForwardArgs {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t *z, *x0, *x1, *y0;
  scalar_t *out, *out2, *val;
  uint8_t* mask;
  opmath_t c0, c1, alpha, beta;
  int64_t n, chunks;
  bool vec;  // every pointer 8-element aligned: full chunks use vector accesses
};

template <typename scalar_t, Act A, Aux K>
__global__ void forward_kernel(const ForwardArgs<scalar_t> a) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t chunk = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; chunk < a.chunks;
       chunk += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i0 = 8 * chunk;
    const int cnt = static_cast<int>(a.n - i0 < 8 ? a.n - i0 : 8);
    const bool vec = a.vec && cnt == 8;
    opmath_t z[8], f[8];
    load8(a.z, i0, cnt, vec, z);
#pragma unroll
    for (int t = 0; t < 8; ++t) f[t] = Activation<A>::f(z[t]);
    opmath_t o[8], o2[8];
    if (a.out) {
      load8(a.x0, i0, cnt, vec, o);
#pragma unroll
      for (int t = 0; t < 8; ++t) o[t] *= a.c0;
      if (a.x1) {
        opmath_t x1[8];
        load8(a.x1, i0, cnt, vec, x1);
#pragma unroll
        for (int t = 0; t < 8; ++t) o[t] += a.c1 * x1[t];
      }
#pragma unroll
      for (int t = 0; t < 8; ++t) o[t] += a.alpha * f[t];
    }
    if (a.out2) {
      load8(a.y0, i0, cnt, vec, o2);
#pragma unroll
      for (int t = 0; t < 8; ++t) o2[t] += a.beta * f[t];
    }
    // Every operand is read: the outputs may alias the inputs they replace.
    if constexpr (K == Aux::Value) store8(a.val, i0, cnt, vec, f);
    if (a.out) store8(a.out, i0, cnt, vec, o);
    if (a.out2) store8(a.out2, i0, cnt, vec, o2);
    if constexpr (K == Aux::Mask) {
      unsigned bits = 0;
#pragma unroll
      for (int t = 0; t < 8; ++t) bits |= static_cast<unsigned>(t < cnt && Activation<A>::mask_bit(z[t])) << t;
      a.mask[chunk] = static_cast<uint8_t>(bits);
    }
  }
}

template <typename scalar_t>
struct GateArgs {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t *lam, *mu, *sum_in, *val;
  const uint8_t* mask;
  scalar_t *g, *sum_out;
  opmath_t c_mu, scale;
  int64_t n, chunks;
  bool vec;
};

// One chunk of the gate; returns g in `g` (lanes past cnt are zero).
template <typename scalar_t, Act A, Aux K, typename opmath_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ void gate_chunk(const GateArgs<scalar_t>& a, int64_t chunk, bool vec_ok, opmath_t (&g)[8]) {
  const int64_t i0 = 8 * chunk;
  const int cnt = static_cast<int>(a.n - i0 < 8 ? a.n - i0 : 8);
  const bool vec = vec_ok && cnt == 8;
  opmath_t v[8], d[8], s[8];
  load8(a.lam, i0, cnt, vec, v);
  if (a.mu) {
    opmath_t m[8];
    load8(a.mu, i0, cnt, vec, m);
    if (a.sum_out) {
      load8(a.sum_in, i0, cnt, vec, s);
#pragma unroll
      for (int t = 0; t < 8; ++t) s[t] += m[t];
    }
#pragma unroll
    for (int t = 0; t < 8; ++t) v[t] += a.c_mu * m[t];
  }
  if constexpr (K == Aux::Mask) {
    const unsigned bits = a.mask[chunk];
#pragma unroll
    for (int t = 0; t < 8; ++t) d[t] = Activation<A>::template df_sign<opmath_t>((bits >> t) & 1u);
  } else if constexpr (K == Aux::Value) {
    load8(a.val, i0, cnt, vec, d);
#pragma unroll
    for (int t = 0; t < 8; ++t) d[t] = Activation<A>::df_value(d[t]);
  } else {
#pragma unroll
    for (int t = 0; t < 8; ++t) d[t] = opmath_t(1);
  }
#pragma unroll
  for (int t = 0; t < 8; ++t) g[t] = t < cnt ? a.scale * d[t] * v[t] : opmath_t(0);
  store8(a.g, i0, cnt, vec, g);  // after every read: g may alias lam
  if (a.mu && a.sum_out) store8(a.sum_out, i0, cnt, vec, s);
}

template <typename scalar_t, Act A, Aux K>
__global__ void gate_kernel(const GateArgs<scalar_t> a) {
  at::opmath_type<scalar_t> g[8];
  for (int64_t chunk = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; chunk < a.chunks;
       chunk += int64_t(gridDim.x) * blockDim.x)
    gate_chunk<scalar_t, A, K>(a, chunk, a.vec, g);
}

// channels_last with C % 8 == 0: chunk j holds channels (8j) % C .. +7. The grid has T threads with 8T % C == 0,
// so every chunk a thread visits holds the same 8 channels; it sums them in registers and writes its 8 partial
// sums to partial[tid * 8 + lane]; bias_kernel then reduces them in a fixed order.
template <typename scalar_t, Act A, Aux K>
__global__ void gate_bias_kernel(const GateArgs<scalar_t> a, at::opmath_type<scalar_t>* __restrict__ partial) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, threads = int64_t(gridDim.x) * blockDim.x;
  opmath_t acc[8] = {}, g[8];
  for (int64_t chunk = tid; chunk < a.chunks; chunk += threads) {
    gate_chunk<scalar_t, A, K>(a, chunk, true, g);
#pragma unroll
    for (int t = 0; t < 8; ++t) acc[t] += g[t];
  }
#pragma unroll
  for (int t = 0; t < 8; ++t) partial[tid * 8 + t] = acc[t];
}

// One block per channel c: bias[c] = sum of partial[tid * 8 + c % 8] over the threads tid whose chunks hold
// channel c, i.e. tid = c / 8 (mod C / 8).
template <typename scalar_t>
__global__ void bias_kernel(const at::opmath_type<scalar_t>* __restrict__ partial, scalar_t* __restrict__ out,
                            int64_t threads, int64_t C) {
  const int64_t c = blockIdx.x, groups = C / 8;
  at::opmath_type<scalar_t> acc = 0;
  for (int64_t tid = c / 8 + threadIdx.x * groups; tid < threads; tid += int64_t(blockDim.x) * groups)
    acc += partial[tid * 8 + c % 8];
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[c] = static_cast<scalar_t>(acc);
}

template <typename scalar_t>
void forward_launch(const ForwardPass& p) {
  ForwardArgs<scalar_t> a;
  a.z = p.z.const_data_ptr<scalar_t>();
  set_combination<scalar_t>(a, p.comb);
  const Aux kind = p.aux.defined() ? p.aux_kind : Aux::None;
  a.val = kind == Aux::Value ? p.aux.mutable_data_ptr<scalar_t>() : nullptr;
  a.mask = kind == Aux::Mask ? p.aux.mutable_data_ptr<uint8_t>() : nullptr;
  a.n = p.z.numel();
  a.chunks = (a.n + 7) / 8;
  if (!a.out && !a.out2 && kind == Aux::None) return;
  a.vec = aligned8<scalar_t>(a.z) && aligned8<scalar_t>(a.x0) && aligned8<scalar_t>(a.x1) &&
          aligned8<scalar_t>(a.y0) && aligned8<scalar_t>(a.out) && aligned8<scalar_t>(a.out2) &&
          aligned8<scalar_t>(a.val);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_reachable<forward_pass_reachable>(p.act, kind, [&](auto act, auto aux) {
    forward_kernel<scalar_t, decltype(act)::value, decltype(aux)::value>
        <<<grid_for(a.chunks, kThreads), kThreads, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Returns whether the bias gradient was reduced in the pass (C % 8 == 0 and aligned data), else left to the caller.
template <typename scalar_t>
bool gate_launch(const GatePass& p) {
  using opmath_t = at::opmath_type<scalar_t>;
  GateArgs<scalar_t> a;
  a.lam = p.lam.const_data_ptr<scalar_t>();
  a.mu = cptr<scalar_t>(p.mu);
  a.sum_in = p.sum_out.defined() ? cptr<scalar_t>(p.sum_in.defined() ? p.sum_in : p.lam) : nullptr;
  a.val = p.aux_kind == Aux::Value ? p.aux.const_data_ptr<scalar_t>() : nullptr;
  a.mask = p.aux_kind == Aux::Mask ? p.aux.const_data_ptr<uint8_t>() : nullptr;
  a.g = p.g.mutable_data_ptr<scalar_t>();
  a.sum_out = mptr<scalar_t>(p.sum_out);
  a.c_mu = p.c_mu, a.scale = p.scale;
  a.n = p.lam.numel();
  a.chunks = (a.n + 7) / 8;
  a.vec = aligned8<scalar_t>(a.lam) && aligned8<scalar_t>(a.mu) && aligned8<scalar_t>(a.sum_in) &&
          aligned8<scalar_t>(a.val) && aligned8<scalar_t>(a.g) && aligned8<scalar_t>(a.sum_out);
  const int64_t C = p.channels;
  const bool fuse_bias = p.bias.defined() && C > 0 && C % 8 == 0 && a.vec;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (!fuse_bias) {
    dispatch_reachable<gate_pass_reachable>(p.act, p.aux_kind, [&](auto act, auto aux) {
      gate_kernel<scalar_t, decltype(act)::value, decltype(aux)::value>
          <<<grid_for(a.chunks, kThreads), kThreads, 0, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return false;
  }
  // The fused-bias grid: about two blocks per SM, rounded so that 8 * threads % C == 0.
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t groups = C / 8, step = groups / std::gcd<int64_t>(groups, kThreads);
  int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(2 * sms, (a.chunks + kThreads - 1) / kThreads));
  blocks = (blocks + step - 1) / step * step;
  const at::Tensor partial =
      at::empty({blocks * kThreads * 8}, p.lam.options().dtype(c10::CppTypeToScalarType<opmath_t>::value));
  dispatch_reachable<gate_pass_reachable>(p.act, p.aux_kind, [&](auto act, auto aux) {
    gate_bias_kernel<scalar_t, decltype(act)::value, decltype(aux)::value>
        <<<blocks, kThreads, 0, stream>>>(a, partial.mutable_data_ptr<opmath_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  bias_kernel<scalar_t><<<C, kThreads, 0, stream>>>(partial.const_data_ptr<opmath_t>(),
                                                     p.bias.mutable_data_ptr<scalar_t>(), blocks * kThreads, C);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

#define CONTRES_ELEMENTWISE_LAUNCHERS(PREFIX, T)           \
  PREFIX template void forward_launch<T>(const ForwardPass&); \
  PREFIX template bool gate_launch<T>(const GatePass&);

}  // namespace cuda_detail
}  // namespace contres
