// CPU passes of the "tv" normalisation (see kernels.h): per pixel, over its C channels, which are contiguous in
// the channels_last data. Parallel over pixels; float and double use at::vec when C is a multiple of the vector
// width, everything else runs scalar loops in opmath. The optional operands are tested once per pixel.
#include "vec_activations.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../kernels.h"

namespace contres {
namespace {

using cpu::act_vec;
using cpu::df_value_vec;
using cpu::kVectorised;
using cpu::Vectorized;

constexpr int64_t kGrainElements = 1 << 14;

// 1 / sqrt(sum_c z_c^2 + eps) of one pixel.
template <typename scalar_t, bool kVec>
at::opmath_type<scalar_t> inverse_length(const scalar_t* z, int64_t C) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t ss = 0;
  if constexpr (kVec) {
    using Vec = Vectorized<scalar_t>;
    Vec acc(0);
    for (int64_t c = 0; c < C; c += Vec::size()) {
      const Vec zv = Vec::loadu(z + c);
      acc = at::vec::fmadd(zv, zv, acc);
    }
    ss = at::vec::vec_reduce_all<scalar_t>([](Vec& a, Vec& b) { return a + b; }, acc);
  } else {
    for (int64_t c = 0; c < C; ++c) ss += static_cast<opmath_t>(z[c]) * static_cast<opmath_t>(z[c]);
  }
  return opmath_t(1) / std::sqrt(ss + static_cast<opmath_t>(kTvEps));
}

// The pointers of one pixel (offset to it) and the pass's scalars.
template <typename T>
struct TvForwardPixel {
  const T *z, *x0, *x1, *y0;
  T *out, *out2, *a_out, *keep;
};

// Forward of one pixel: a = act(z / r); out = c0 x0 + c1 x1 + alpha a, out2 = y0 + beta a, a_out = a (may alias
// z), keep = z -- each when its pointer is set.
template <typename scalar_t, Act A, bool kVec>
void tv_forward_pixel(const TvForwardPixel<scalar_t>& p, int64_t C, const at::opmath_type<scalar_t>* k) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t inv_r = inverse_length<scalar_t, kVec>(p.z, C);
  if constexpr (kVec) {
    using Vec = Vectorized<scalar_t>;
    const Vec iv(inv_r), c0(k[0]), c1(k[1]), alpha(k[2]), beta(k[3]);
    for (int64_t c = 0; c < C; c += Vec::size()) {
      const Vec zv = Vec::loadu(p.z + c);
      if (p.keep) zv.store(p.keep + c);
      const Vec a = act_vec<A>(zv * iv);
      if (p.out) {
        Vec base = c0 * Vec::loadu(p.x0 + c);
        if (p.x1) base = at::vec::fmadd(c1, Vec::loadu(p.x1 + c), base);
        at::vec::fmadd(alpha, a, base).store(p.out + c);
      }
      if (p.out2) at::vec::fmadd(beta, a, Vec::loadu(p.y0 + c)).store(p.out2 + c);
      if (p.a_out) a.store(p.a_out + c);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const opmath_t zc = static_cast<opmath_t>(p.z[c]);
      if (p.keep) p.keep[c] = p.z[c];
      const opmath_t a = Activation<A>::f(zc * inv_r);
      if (p.out) {
        opmath_t o = k[0] * static_cast<opmath_t>(p.x0[c]);
        if (p.x1) o += k[1] * static_cast<opmath_t>(p.x1[c]);
        p.out[c] = static_cast<scalar_t>(o + k[2] * a);
      }
      if (p.out2) p.out2[c] = static_cast<scalar_t>(static_cast<opmath_t>(p.y0[c]) + k[3] * a);
      if (p.a_out) p.a_out[c] = static_cast<scalar_t>(a);
    }
  }
}

template <typename T>
struct TvGatePixel {
  const T *lam, *mu, *z, *sum_in;
  T *g, *sum_out, *a_out;
};

// Adjoint of one pixel: v = lam + c_mu mu, w = scale act'(n) v, g = (w - n (n . w)) / r with n = z / r;
// sum_out = sum_in + mu; a_out = act(n). w waits in `w` (opmath, C entries) between the two loops, so g may
// alias lam and sum_out may alias mu or sum_in.
template <typename scalar_t, Act A, bool kVec>
void tv_gate_pixel(const TvGatePixel<scalar_t>& p, at::opmath_type<scalar_t>* w, int64_t C,
                   at::opmath_type<scalar_t> c_mu, at::opmath_type<scalar_t> scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t inv_r = inverse_length<scalar_t, kVec>(p.z, C);
  if constexpr (kVec) {
    using Vec = Vectorized<scalar_t>;
    const Vec iv(inv_r), sv(scale), cv(c_mu);
    Vec dot(0);
    for (int64_t c = 0; c < C; c += Vec::size()) {
      Vec v = Vec::loadu(p.lam + c);
      if (p.mu) {
        const Vec m = Vec::loadu(p.mu + c);
        v = at::vec::fmadd(cv, m, v);
        if (p.sum_out) (Vec::loadu(p.sum_in + c) + m).store(p.sum_out + c);
      }
      const Vec n = Vec::loadu(p.z + c) * iv;
      const Vec a = act_vec<A>(n);
      if (p.a_out) a.store(p.a_out + c);
      const Vec wv = sv * df_value_vec<A>(a) * v;
      wv.store(w + c);
      dot = at::vec::fmadd(n, wv, dot);
    }
    const Vec dv(at::vec::vec_reduce_all<scalar_t>([](Vec& x, Vec& y) { return x + y; }, dot));
    for (int64_t c = 0; c < C; c += Vec::size())
      ((Vec::loadu(w + c) - Vec::loadu(p.z + c) * iv * dv) * iv).store(p.g + c);
  } else {
    opmath_t dot = 0;
    for (int64_t c = 0; c < C; ++c) {
      opmath_t v = static_cast<opmath_t>(p.lam[c]);
      if (p.mu) {
        const opmath_t m = static_cast<opmath_t>(p.mu[c]);
        v += c_mu * m;
        if (p.sum_out) p.sum_out[c] = static_cast<scalar_t>(static_cast<opmath_t>(p.sum_in[c]) + m);
      }
      const opmath_t n = static_cast<opmath_t>(p.z[c]) * inv_r;
      const opmath_t a = Activation<A>::f(n);
      if (p.a_out) p.a_out[c] = static_cast<scalar_t>(a);
      w[c] = scale * Activation<A>::df_value(a) * v;
      dot += n * w[c];
    }
    for (int64_t c = 0; c < C; ++c)
      p.g[c] = static_cast<scalar_t>((w[c] - static_cast<opmath_t>(p.z[c]) * inv_r * dot) * inv_r);
  }
}

// Runs body(act, vectorised, begin, end) on chunks [begin, end) of the numel / C pixels in parallel, with the
// activation and the vector flag as std::integral_constant.
template <typename scalar_t, typename Body>
void for_pixel_chunks(Act act, int64_t numel, int64_t C, const Body& body) {
  dispatch_activation(act, [&](auto a) {
    auto run = [&](auto vec) {
      at::parallel_for(0, numel / C, std::max<int64_t>(1, kGrainElements / C),
                       [&](int64_t begin, int64_t end) { body(a, vec, begin, end); });
    };
    if constexpr (kVectorised<scalar_t>) {
      if (C % Vectorized<scalar_t>::size() == 0) return run(std::true_type{});
    }
    run(std::false_type{});
  });
}

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}
template <typename T>
const T* const_ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

}  // namespace

void tv_forward_pass_cpu(const TvForwardPass& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.z.scalar_type(), "contres_tv_forward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const TvForwardPixel<scalar_t> base{a.z.const_data_ptr<scalar_t>(), const_ptr_or_null<scalar_t>(a.comb.x0),
                                        a.comb.out.defined() ? const_ptr_or_null<scalar_t>(a.comb.x1) : nullptr,
                                        const_ptr_or_null<scalar_t>(a.comb.y0), ptr_or_null<scalar_t>(a.comb.out),
                                        ptr_or_null<scalar_t>(a.comb.out2), ptr_or_null<scalar_t>(a.a_out),
                                        ptr_or_null<scalar_t>(a.z_keep)};
    const opmath_t k[4] = {static_cast<opmath_t>(a.comb.c0), static_cast<opmath_t>(a.comb.c1),
                           static_cast<opmath_t>(a.comb.alpha), static_cast<opmath_t>(a.comb.beta)};
    const int64_t C = a.channels;
    auto at_pixel = [](auto p, int64_t o) {
      auto shift = [o](auto q) { return q ? q + o : q; };
      p.z = shift(p.z), p.x0 = shift(p.x0), p.x1 = shift(p.x1), p.y0 = shift(p.y0);
      p.out = shift(p.out), p.out2 = shift(p.out2), p.a_out = shift(p.a_out), p.keep = shift(p.keep);
      return p;
    };
    for_pixel_chunks<scalar_t>(a.act, a.z.numel(), C, [&](auto act, auto vec, int64_t begin, int64_t end) {
      for (int64_t px = begin; px < end; ++px)
        tv_forward_pixel<scalar_t, decltype(act)::value, decltype(vec)::value>(at_pixel(base, px * C), C, k);
    });
  });
}

void tv_gate_pass_cpu(const TvGatePass& a) {
  TORCH_CHECK(!a.sum_out.defined() || a.mu.defined(), "contres: internal error: the gate's running sum adds mu");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.lam.scalar_type(), "contres_tv_gate_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const TvGatePixel<scalar_t> base{a.lam.const_data_ptr<scalar_t>(), const_ptr_or_null<scalar_t>(a.mu),
                                     a.z.const_data_ptr<scalar_t>(),
                                     const_ptr_or_null<scalar_t>(a.sum_in.defined() ? a.sum_in : a.lam),
                                     a.g.mutable_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(a.sum_out),
                                     ptr_or_null<scalar_t>(a.a_out)};
    const int64_t C = a.channels;
    const auto c_mu = static_cast<opmath_t>(a.c_mu), scale = static_cast<opmath_t>(a.scale);
    auto at_pixel = [](auto p, int64_t o) {
      auto shift = [o](auto q) { return q ? q + o : q; };
      p.lam = shift(p.lam), p.mu = shift(p.mu), p.z = shift(p.z), p.sum_in = shift(p.sum_in);
      p.g = shift(p.g), p.sum_out = shift(p.sum_out), p.a_out = shift(p.a_out);
      return p;
    };
    for_pixel_chunks<scalar_t>(a.act, a.lam.numel(), C, [&](auto act, auto vec, int64_t begin, int64_t end) {
      std::vector<opmath_t> w(C);  // this chunk's scratch for one pixel's w
      for (int64_t px = begin; px < end; ++px)
        tv_gate_pixel<scalar_t, decltype(act)::value, decltype(vec)::value>(at_pixel(base, px * C), w.data(), C,
                                                                            c_mu, scale);
    });
  });
}

}  // namespace contres
