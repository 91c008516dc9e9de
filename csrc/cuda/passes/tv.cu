// CUDA passes of the "tv" normalisation (kernels.h): per pixel over its C channels, which are contiguous in
// channels_last. The activation is a run-time argument, the same for every thread (a uniform branch next to a
// square root and a reduction per pixel), which keeps the instantiations to dtype x lanes per pixel. G lanes of a warp share one pixel (G = 32 for C >= 32, 8 for C >= 8, else 1), each taking the
// channels lane, lane + G, ...; the pixel's sums are reduced across the G lanes with shuffles. Loops run per warp,
// so every lane of a warp takes part in every shuffle, and lanes past the last pixel contribute zeros.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include "../../kernels.h"
#include "common.cuh"

namespace contres {
namespace cuda_detail {
namespace {

template <typename T>
__device__ __forceinline__ T act_f(Act act, T z) {
  switch (act) {
    case Act::Identity: return Activation<Act::Identity>::f(z);
    case Act::Relu: return Activation<Act::Relu>::f(z);
    case Act::LeakyRelu: return Activation<Act::LeakyRelu>::f(z);
    case Act::Tanh: return Activation<Act::Tanh>::f(z);
    case Act::Sigmoid: return Activation<Act::Sigmoid>::f(z);
  }
  return z;
}

template <typename T>
__device__ __forceinline__ T act_df_value(Act act, T a) {
  switch (act) {
    case Act::Identity: return Activation<Act::Identity>::df_value(a);
    case Act::Relu: return Activation<Act::Relu>::df_value(a);
    case Act::LeakyRelu: return Activation<Act::LeakyRelu>::df_value(a);
    case Act::Tanh: return Activation<Act::Tanh>::df_value(a);
    case Act::Sigmoid: return Activation<Act::Sigmoid>::df_value(a);
  }
  return T(1);
}

template <int G, typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int offset = G / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset, G);
  return v;
}

// 1 / sqrt(sum_c z_c^2 + eps) of the pixel at z, from the G lanes that share it (lane sub takes channels sub,
// sub + G, ...); every lane of the warp must call it, those without a pixel (live false) too.
template <int G, typename opmath_t, typename scalar_t>
__device__ __forceinline__ opmath_t inverse_length(const scalar_t* z, int64_t C, int sub, bool live) {
  opmath_t ss = 0;
  if (live)
    for (int64_t c = sub; c < C; c += G) {
      const opmath_t zc = static_cast<opmath_t>(z[c]);
      ss += zc * zc;
    }
  return opmath_t(1) / ::sqrt(group_sum<G>(ss) + static_cast<opmath_t>(kTvEps));
}

// Walks the pixels, G lanes to a pixel (a warp takes 32 / G pixels a turn), and calls body(o, sub, live, inv_r) on
// every lane, those without a pixel too (live false: the shuffles need the whole warp). o is the pixel's first
// element, sub the lane's first channel (it takes sub, sub + G, ...), inv_r the pixel's inverse_length.
template <int G, typename opmath_t, typename scalar_t, typename Body>
__device__ __forceinline__ void for_each_pixel(const scalar_t* z, int64_t pixels, int64_t C, const Body& body) {
  constexpr int kPerWarp = 32 / G;
  const int lane = threadIdx.x % 32, sub = lane % G;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t base = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32 * kPerWarp; base < pixels;
       base += warps * kPerWarp) {
    const int64_t px = base + lane / G;
    const bool live = px < pixels;
    const int64_t o = px * C;
    body(o, sub, live, inverse_length<G, opmath_t>(z + o, C, sub, live));
  }
}

template <typename scalar_t>
struct TvForwardArgs {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t *z, *x0, *x1, *y0;
  scalar_t *out, *out2, *a_out, *keep;
  opmath_t c0, c1, alpha, beta;
  int64_t pixels, C;
  Act act;
};

template <typename scalar_t, int G>
__global__ void tv_forward_kernel(const TvForwardArgs<scalar_t> a) {
  using opmath_t = at::opmath_type<scalar_t>;
  for_each_pixel<G, opmath_t>(a.z, a.pixels, a.C, [&](int64_t o, int sub, bool live, opmath_t inv_r) {
    if (!live) return;
    for (int64_t c = sub; c < a.C; c += G) {
      const int64_t i = o + c;
      const scalar_t zs = a.z[i];
      const opmath_t f = act_f(a.act, static_cast<opmath_t>(zs) * inv_r);
      opmath_t r = 0, r2 = 0;
      if (a.out) {
        r = a.c0 * static_cast<opmath_t>(a.x0[i]);
        if (a.x1) r += a.c1 * static_cast<opmath_t>(a.x1[i]);
        r += a.alpha * f;
      }
      if (a.out2) r2 = static_cast<opmath_t>(a.y0[i]) + a.beta * f;
      if (a.keep) a.keep[i] = zs;
      if (a.out) a.out[i] = static_cast<scalar_t>(r);
      if (a.out2) a.out2[i] = static_cast<scalar_t>(r2);
      if (a.a_out) a.a_out[i] = static_cast<scalar_t>(f);  // may alias z: its element was read above
    }
  });
}

template <typename scalar_t>
struct TvGateArgs {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t *lam, *mu, *z, *sum_in;
  scalar_t *g, *sum_out, *a_out;
  opmath_t c_mu, scale;
  int64_t pixels, C;
  Act act;
};

// w = scale act'(n) (lam + c_mu mu) goes to g in the first loop and becomes g = (w - n (n . w)) / r in the second,
// each lane on its own channels: g may alias lam and sum_out may alias mu or sum_in.
template <typename scalar_t, int G>
__global__ void tv_gate_kernel(const TvGateArgs<scalar_t> a) {
  using opmath_t = at::opmath_type<scalar_t>;
  for_each_pixel<G, opmath_t>(a.z, a.pixels, a.C, [&](int64_t o, int sub, bool live, opmath_t inv_r) {
    opmath_t dot = 0;
    if (live)
      for (int64_t c = sub; c < a.C; c += G) {
        const int64_t i = o + c;
        opmath_t v = static_cast<opmath_t>(a.lam[i]);
        if (a.mu) {
          const opmath_t m = static_cast<opmath_t>(a.mu[i]);
          v += a.c_mu * m;
          if (a.sum_out) a.sum_out[i] = static_cast<scalar_t>(static_cast<opmath_t>(a.sum_in[i]) + m);
        }
        const opmath_t n = static_cast<opmath_t>(a.z[i]) * inv_r;
        const opmath_t f = act_f(a.act, n);
        if (a.a_out) a.a_out[i] = static_cast<scalar_t>(f);
        const opmath_t w = a.scale * act_df_value(a.act, f) * v;
        a.g[i] = static_cast<scalar_t>(w);
        dot += n * static_cast<opmath_t>(a.g[i]);  // the stored w, as the second loop reads it
      }
    dot = group_sum<G>(dot);
    if (!live) return;
    for (int64_t c = sub; c < a.C; c += G) {
      const int64_t i = o + c;
      const opmath_t n = static_cast<opmath_t>(a.z[i]) * inv_r;
      a.g[i] = static_cast<scalar_t>((static_cast<opmath_t>(a.g[i]) - n * dot) * inv_r);
    }
  });
}

// Calls fn(std::integral_constant<int, G>{}) for the lanes per pixel that suit C.
template <typename Fn>
void dispatch_group(int64_t C, const Fn& fn) {
  if (C >= 32) return fn(std::integral_constant<int, 32>{});
  if (C >= 8) return fn(std::integral_constant<int, 8>{});
  fn(std::integral_constant<int, 1>{});
}

int64_t tv_blocks(int64_t pixels, int G) {
  const int64_t pixels_per_block = int64_t(kThreads / 32) * (32 / G);
  return grid_for(pixels, static_cast<int>(pixels_per_block));
}

}  // namespace
}  // namespace cuda_detail

void tv_forward_pass_cuda(const TvForwardPass& p) {
  using namespace cuda_detail;
  TORCH_CHECK(!p.comb.out_low.defined(), "contres: internal error: mixed precision runs on the CPU only");
  if (p.z.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.z.scalar_type(), "contres_tv_forward_cuda", [&] {
    TvForwardArgs<scalar_t> a;
    a.z = p.z.const_data_ptr<scalar_t>();
    set_combination<scalar_t>(a, p.comb);
    a.a_out = mptr<scalar_t>(p.a_out), a.keep = mptr<scalar_t>(p.z_keep);
    a.C = p.channels, a.pixels = p.z.numel() / p.channels, a.act = p.act;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch_group(a.C, [&](auto group) {
      constexpr int G = decltype(group)::value;
      tv_forward_kernel<scalar_t, G><<<tv_blocks(a.pixels, G), kThreads, 0, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void tv_gate_pass_cuda(const TvGatePass& p) {
  using namespace cuda_detail;
  TORCH_CHECK(!p.sum_out.defined() || p.mu.defined(), "contres: internal error: the gate's running sum adds mu");
  if (p.lam.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.lam.scalar_type(), "contres_tv_gate_cuda", [&] {
    TvGateArgs<scalar_t> a;
    a.lam = p.lam.const_data_ptr<scalar_t>();
    a.mu = cptr<scalar_t>(p.mu);
    a.z = p.z.const_data_ptr<scalar_t>();
    a.sum_in = p.sum_out.defined() ? cptr<scalar_t>(p.sum_in.defined() ? p.sum_in : p.lam) : nullptr;
    a.g = p.g.mutable_data_ptr<scalar_t>(), a.sum_out = mptr<scalar_t>(p.sum_out), a.a_out = mptr<scalar_t>(p.a_out);
    a.c_mu = p.c_mu, a.scale = p.scale;
    a.C = p.channels, a.pixels = p.lam.numel() / p.channels, a.act = p.act;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch_group(a.C, [&](auto group) {
      constexpr int G = decltype(group)::value;
      tv_gate_kernel<scalar_t, G><<<tv_blocks(a.pixels, G), kThreads, 0, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace contres
