// CPU passes of the "tv" normalisation (see kernels.h): per pixel, over its C channels, which are contiguous in
// the channels_last data. Parallel over pixels; every dtype pair (vec.h's DtypePair) uses at::vec when C is a
// multiple of the opmath vector width (loads widen the reduced types to float, stores round back), everything
// else runs scalar loops in opmath. The optional operands are tested once per pixel.
#include "vec.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../kernels.h"

namespace contres {
namespace {

using cpu::act_vec;
using cpu::df_value_vec;
using cpu::load_vec;
using cpu::OpVec;
using cpu::shifted;
using cpu::store_vec;

constexpr int64_t kGrainElements = 1 << 14;

// 1 / sqrt(sum_c z_c^2 + eps) of one pixel. With a reduced L (vectorised) it also leaves z widened in zf, so
// that the pass converts each element once.
template <typename L, bool kVec>
at::opmath_type<L> inverse_length(const L* z, int64_t C, at::opmath_type<L>* zf) {
  using opmath_t = at::opmath_type<L>;
  opmath_t ss = 0;
  if constexpr (kVec) {
    using Vec = OpVec<L>;
    Vec acc(0);
    for (int64_t c = 0; c < C; c += Vec::size()) {
      const Vec zv = load_vec(z + c);
      if constexpr (cpu::kReduced<L>) zv.store(zf + c);
      acc = at::vec::fmadd(zv, zv, acc);
    }
    ss = at::vec::vec_reduce_all<opmath_t>([](Vec& a, Vec& b) { return a + b; }, acc);
  } else {
    for (int64_t c = 0; c < C; ++c) ss += static_cast<opmath_t>(z[c]) * static_cast<opmath_t>(z[c]);
  }
  return opmath_t(1) / std::sqrt(ss + static_cast<opmath_t>(kTvEps));
}

// z[c .. c + V) as a vector: from inverse_length's widened copy for a reduced L.
template <typename L>
OpVec<L> z_vec(const L* z, const at::opmath_type<L>* zf, int64_t c) {
  if constexpr (cpu::kReduced<L>) return OpVec<L>::loadu(zf + c);
  else return load_vec(z + c);
}

// The pointers of one pixel (kernels.h: z, out_low, a_out and keep in the convolution dtype L, the rest in the
// state dtype S), offset to it by at().
template <typename S, typename L>
struct TvForwardPixel {
  const L* z;
  const S *x0, *x1, *y0;
  S *out, *out2;
  L *out_low, *a_out, *keep;
  TvForwardPixel at(int64_t o) const {
    return {z + o,           shifted(x0, o),      shifted(x1, o),    shifted(y0, o),  shifted(out, o),
            shifted(out2, o), shifted(out_low, o), shifted(a_out, o), shifted(keep, o)};
  }
};

// Forward of one pixel: a = act(z / r); out (and out_low) = c0 x0 + c1 x1 + alpha a, out2 = y0 + beta a,
// a_out = a (may alias z), keep = z -- each when its pointer is set.
template <typename S, typename L, Act A, bool kVec>
void tv_forward_pixel(const TvForwardPixel<S, L>& p, int64_t C, const at::opmath_type<S>* k,
                      at::opmath_type<S>* zf) {
  using opmath_t = at::opmath_type<S>;
  const opmath_t inv_r = inverse_length<L, kVec>(p.z, C, zf);
  const bool combine = p.out || p.out_low;
  if (p.keep) std::memcpy(p.keep, p.z, C * sizeof(L));  // before a_out, which may alias z, is written
  if constexpr (kVec) {
    using Vec = OpVec<S>;
    const Vec iv(inv_r), c0(k[0]), c1(k[1]), alpha(k[2]), beta(k[3]);
    for (int64_t c = 0; c < C; c += Vec::size()) {
      const Vec a = act_vec<A>(z_vec(p.z, zf, c) * iv);
      if (combine) {
        Vec base = c0 * load_vec(p.x0 + c);
        if (p.x1) base = at::vec::fmadd(c1, load_vec(p.x1 + c), base);
        const Vec o = at::vec::fmadd(alpha, a, base);
        if (p.out) store_vec(p.out + c, o);
        if (p.out_low) store_vec(p.out_low + c, o);
      }
      if (p.out2) store_vec(p.out2 + c, at::vec::fmadd(beta, a, load_vec(p.y0 + c)));
      if (p.a_out) store_vec(p.a_out + c, a);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const opmath_t a = Activation<A>::f(static_cast<opmath_t>(p.z[c]) * inv_r);
      if (combine) {
        opmath_t o = k[0] * static_cast<opmath_t>(p.x0[c]);
        if (p.x1) o += k[1] * static_cast<opmath_t>(p.x1[c]);
        o += k[2] * a;
        if (p.out) p.out[c] = static_cast<S>(o);
        if (p.out_low) p.out_low[c] = static_cast<L>(o);
      }
      if (p.out2) p.out2[c] = static_cast<S>(static_cast<opmath_t>(p.y0[c]) + k[3] * a);
      if (p.a_out) p.a_out[c] = static_cast<L>(a);
    }
  }
}

// kernels.h: lam and the running sums in the state dtype S; mu, z, g and a_out in the convolution dtype L.
template <typename S, typename L>
struct TvGatePixel {
  const S *lam, *sum_in;
  const L *mu, *z;
  L *g, *a_out;
  S* sum_out;
  TvGatePixel at(int64_t o) const {
    return {lam + o, shifted(sum_in, o), shifted(mu, o), z + o, g + o, shifted(a_out, o), shifted(sum_out, o)};
  }
};

// Adjoint of one pixel: v = lam + c_mu mu, w = scale act'(n) v, g = (w - n (n . w)) / r with n = z / r;
// sum_out = sum_in + mu; a_out = act(n). w waits in `w` (opmath, C entries) between the two loops, so g may
// alias lam and sum_out may alias mu or sum_in; zf holds z widened (a reduced L).
template <typename S, typename L, Act A, bool kVec>
void tv_gate_pixel(const TvGatePixel<S, L>& p, at::opmath_type<S>* w, at::opmath_type<S>* zf, int64_t C,
                   at::opmath_type<S> c_mu, at::opmath_type<S> scale) {
  using opmath_t = at::opmath_type<S>;
  const opmath_t inv_r = inverse_length<L, kVec>(p.z, C, zf);
  if constexpr (kVec) {
    using Vec = OpVec<S>;
    const Vec iv(inv_r), sv(scale), cv(c_mu);
    Vec dot(0);
    for (int64_t c = 0; c < C; c += Vec::size()) {
      Vec v = load_vec(p.lam + c);
      if (p.mu) {
        const Vec m = load_vec(p.mu + c);
        v = at::vec::fmadd(cv, m, v);
        if (p.sum_out) store_vec(p.sum_out + c, load_vec(p.sum_in + c) + m);
      }
      const Vec n = z_vec(p.z, zf, c) * iv;
      const Vec a = act_vec<A>(n);
      if (p.a_out) store_vec(p.a_out + c, a);
      const Vec wv = sv * df_value_vec<A>(a) * v;
      wv.store(w + c);
      dot = at::vec::fmadd(n, wv, dot);
    }
    const Vec dv(at::vec::vec_reduce_all<opmath_t>([](Vec& x, Vec& y) { return x + y; }, dot));
    for (int64_t c = 0; c < C; c += Vec::size())
      store_vec(p.g + c, (Vec::loadu(w + c) - z_vec(p.z, zf, c) * iv * dv) * iv);
  } else {
    opmath_t dot = 0;
    for (int64_t c = 0; c < C; ++c) {
      opmath_t v = static_cast<opmath_t>(p.lam[c]);
      if (p.mu) {
        const opmath_t m = static_cast<opmath_t>(p.mu[c]);
        v += c_mu * m;
        if (p.sum_out) p.sum_out[c] = static_cast<S>(static_cast<opmath_t>(p.sum_in[c]) + m);
      }
      const opmath_t n = static_cast<opmath_t>(p.z[c]) * inv_r;
      const opmath_t a = Activation<A>::f(n);
      if (p.a_out) p.a_out[c] = static_cast<L>(a);
      w[c] = scale * Activation<A>::df_value(a) * v;
      dot += n * w[c];
    }
    for (int64_t c = 0; c < C; ++c)
      p.g[c] = static_cast<L>((w[c] - static_cast<opmath_t>(p.z[c]) * inv_r * dot) * inv_r);
  }
}

// Runs body(act, vectorised, begin, end) on chunks [begin, end) of the numel / C pixels in parallel, with the
// activation and the vector flag as std::integral_constant.
template <typename S, typename Body>
void for_pixel_chunks(Act act, int64_t numel, int64_t C, const Body& body) {
  dispatch_layer_activation(act, [&](auto a) {
    auto run = [&](auto vec) {
      at::parallel_for(0, numel / C, std::max<int64_t>(1, kGrainElements / C),
                       [&](int64_t begin, int64_t end) { body(a, vec, begin, end); });
    };
    if (C % OpVec<S>::size() == 0) return run(std::true_type{});
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
  const Combination& comb = a.comb;
  const at::ScalarType conv = a.z.scalar_type();
  cpu::dispatch_dtypes(comb.state_dtype(conv), conv, "contres_tv_forward_cpu", [&](auto types) {
    using S = typename decltype(types)::state_t;
    using L = typename decltype(types)::conv_t;
    using opmath_t = at::opmath_type<S>;
    const bool combine = comb.out.defined() || comb.out_low.defined();
    const TvForwardPixel<S, L> base{a.z.const_data_ptr<L>(),
                                    combine ? comb.x0.const_data_ptr<S>() : nullptr,
                                    combine ? const_ptr_or_null<S>(comb.x1) : nullptr,
                                    const_ptr_or_null<S>(comb.y0),
                                    ptr_or_null<S>(comb.out),
                                    ptr_or_null<S>(comb.out2),
                                    ptr_or_null<L>(comb.out_low),
                                    ptr_or_null<L>(a.a_out),
                                    ptr_or_null<L>(a.z_keep)};
    const opmath_t k[4] = {static_cast<opmath_t>(comb.c0), static_cast<opmath_t>(comb.c1),
                           static_cast<opmath_t>(comb.alpha), static_cast<opmath_t>(comb.beta)};
    const int64_t C = a.channels;
    for_pixel_chunks<S>(a.act, a.z.numel(), C, [&](auto act, auto vec, int64_t begin, int64_t end) {
      std::vector<opmath_t> zf(C);  // this chunk's scratch for one pixel's widened z
      for (int64_t px = begin; px < end; ++px)
        tv_forward_pixel<S, L, decltype(act)::value, decltype(vec)::value>(base.at(px * C), C, k, zf.data());
    });
  });
}

void tv_gate_pass_cpu(const TvGatePass& a) {
  TORCH_CHECK(!a.sum_out.defined() || a.mu.defined(), "contres: internal error: the gate's running sum adds mu");
  cpu::dispatch_dtypes(a.lam.scalar_type(), a.g.scalar_type(), "contres_tv_gate_cpu", [&](auto types) {
    using S = typename decltype(types)::state_t;
    using L = typename decltype(types)::conv_t;
    using opmath_t = at::opmath_type<S>;
    const TvGatePixel<S, L> base{a.lam.const_data_ptr<S>(),
                                 a.sum_out.defined() ? (a.sum_in.defined() ? a.sum_in : a.lam).const_data_ptr<S>()
                                                     : nullptr,
                                 const_ptr_or_null<L>(a.mu),
                                 a.z.const_data_ptr<L>(),
                                 a.g.mutable_data_ptr<L>(),
                                 ptr_or_null<L>(a.a_out),
                                 ptr_or_null<S>(a.sum_out)};
    const int64_t C = a.channels;
    const auto c_mu = static_cast<opmath_t>(a.c_mu), scale = static_cast<opmath_t>(a.scale);
    for_pixel_chunks<S>(a.act, a.lam.numel(), C, [&](auto act, auto vec, int64_t begin, int64_t end) {
      std::vector<opmath_t> w(C), zf(C);  // this chunk's scratch for one pixel's w and widened z
      for (int64_t px = begin; px < end; ++px)
        tv_gate_pixel<S, L, decltype(act)::value, decltype(vec)::value>(base.at(px * C), w.data(), zf.data(), C,
                                                                          c_mu, scale);
    });
  });
}

}  // namespace contres
