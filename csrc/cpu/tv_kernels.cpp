// CPU passes of the "tv" normalisation (see kernels.h): per pixel, over its C channels, which are contiguous in
// the channels_last data. Parallel over pixels; float and double use at::vec when C is a multiple of the vector
// width, everything else runs scalar loops in opmath.
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

// Forward of one pixel: a = act(z / r); single: out = u + h a, else a_out = a (may alias z); keep = z if kKeep.
template <typename scalar_t, Act A, bool kSingle, bool kKeep, bool kVec>
void tv_forward_pixel(const scalar_t* z, const scalar_t* u, scalar_t* out, scalar_t* a_out, scalar_t* keep,
                      int64_t C, at::opmath_type<scalar_t> h) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t inv_r = inverse_length<scalar_t, kVec>(z, C);
  if constexpr (kVec) {
    using Vec = Vectorized<scalar_t>;
    const Vec iv(inv_r), hv(h);
    for (int64_t c = 0; c < C; c += Vec::size()) {
      const Vec zv = Vec::loadu(z + c);
      if constexpr (kKeep) zv.store(keep + c);
      const Vec a = act_vec<A>(zv * iv);
      if constexpr (kSingle) at::vec::fmadd(hv, a, Vec::loadu(u + c)).store(out + c);
      else a.store(a_out + c);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const opmath_t zc = static_cast<opmath_t>(z[c]);
      if constexpr (kKeep) keep[c] = z[c];
      const opmath_t a = Activation<A>::f(zc * inv_r);
      if constexpr (kSingle) out[c] = static_cast<scalar_t>(static_cast<opmath_t>(u[c]) + h * a);
      else a_out[c] = static_cast<scalar_t>(a);
    }
  }
}

// Adjoint of one pixel: v = lam (+ gi), w = scale act'(n) v, g = (w - n (n . w)) / r, n = z / r.
// w waits in `w` (opmath, C entries) between the two loops; v_out may alias gi and g_out lam.
template <typename scalar_t, Act A, bool kGi, bool kA, bool kVec>
void tv_adjoint_pixel(const scalar_t* lam, const scalar_t* gi, const scalar_t* z, scalar_t* v_out, scalar_t* g_out,
                      scalar_t* a_out, at::opmath_type<scalar_t>* w, int64_t C, at::opmath_type<scalar_t> scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t inv_r = inverse_length<scalar_t, kVec>(z, C);
  if constexpr (kVec) {
    using Vec = Vectorized<scalar_t>;
    const Vec iv(inv_r), sv(scale);
    Vec dot(0);
    for (int64_t c = 0; c < C; c += Vec::size()) {
      Vec v = Vec::loadu(lam + c);
      if constexpr (kGi) {
        v = v + Vec::loadu(gi + c);
        v.store(v_out + c);
      }
      const Vec n = Vec::loadu(z + c) * iv;
      const Vec a = act_vec<A>(n);
      if constexpr (kA) a.store(a_out + c);
      const Vec wv = sv * df_value_vec<A>(a) * v;
      wv.store(w + c);
      dot = at::vec::fmadd(n, wv, dot);
    }
    const Vec dv(at::vec::vec_reduce_all<scalar_t>([](Vec& x, Vec& y) { return x + y; }, dot));
    for (int64_t c = 0; c < C; c += Vec::size())
      ((Vec::loadu(w + c) - Vec::loadu(z + c) * iv * dv) * iv).store(g_out + c);
  } else {
    opmath_t dot = 0;
    for (int64_t c = 0; c < C; ++c) {
      opmath_t v = static_cast<opmath_t>(lam[c]);
      if constexpr (kGi) {
        v += static_cast<opmath_t>(gi[c]);
        v_out[c] = static_cast<scalar_t>(v);
      }
      const opmath_t n = static_cast<opmath_t>(z[c]) * inv_r;
      const opmath_t a = Activation<A>::f(n);
      if constexpr (kA) a_out[c] = static_cast<scalar_t>(a);
      w[c] = scale * Activation<A>::df_value(a) * v;
      dot += n * w[c];
    }
    for (int64_t c = 0; c < C; ++c)
      g_out[c] = static_cast<scalar_t>((w[c] - static_cast<opmath_t>(z[c]) * inv_r * dot) * inv_r);
  }
}

// Calls fn(std::integral_constant<bool, vectorised>{}) for this dtype and channel count.
template <typename scalar_t, typename Fn>
void dispatch_vectorised(int64_t C, const Fn& fn) {
  if constexpr (kVectorised<scalar_t>) {
    if (C % Vectorized<scalar_t>::size() == 0) return fn(std::true_type{});
  }
  fn(std::false_type{});
}

template <typename Fn>
void dispatch_bool(bool value, const Fn& fn) {
  if (value) fn(std::true_type{});
  else fn(std::false_type{});
}

// Runs body(act, first, second, vectorised, begin, end) on chunks [begin, end) of the numel / C pixels in
// parallel, with the activation and the flags as std::integral_constant, so every per-pixel loop is branch-free.
template <typename scalar_t, typename Body>
void for_pixel_chunks(Act act, bool first, bool second, int64_t numel, int64_t C, const Body& body) {
  dispatch_activation(act, [&](auto a) {
    dispatch_bool(first, [&](auto f) {
      dispatch_bool(second, [&](auto s) {
        dispatch_vectorised<scalar_t>(C, [&](auto v) {
          at::parallel_for(0, numel / C, std::max<int64_t>(1, kGrainElements / C),
                           [&](int64_t begin, int64_t end) { body(a, f, s, v, begin, end); });
        });
      });
    });
  });
}

}  // namespace

void tv_forward_cpu(const at::Tensor& z, int64_t channels, Act act, const at::Tensor& u, double h,
                    const at::Tensor& u_next, const at::Tensor& a_out, const at::Tensor& z_keep) {
  TORCH_CHECK(u.defined() == u_next.defined() && u_next.defined() != a_out.defined(),
              "contres: tv_forward writes u_next (single layer) or a_out (double_sym)");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "contres_tv_forward_cpu", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* up = u.defined() ? u.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* outp = u_next.defined() ? u_next.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* ap = a_out.defined() ? a_out.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* keepp = z_keep.defined() ? z_keep.mutable_data_ptr<scalar_t>() : nullptr;
    const auto hh = static_cast<at::opmath_type<scalar_t>>(h);
    for_pixel_chunks<scalar_t>(act, u.defined(), z_keep.defined(), z.numel(), channels,
                               [&](auto a, auto single, auto keep, auto vec, int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t o = p * channels;
        tv_forward_pixel<scalar_t, decltype(a)::value, decltype(single)::value, decltype(keep)::value,
                         decltype(vec)::value>(zp + o, up ? up + o : nullptr, outp ? outp + o : nullptr,
                                               ap ? ap + o : nullptr, keepp ? keepp + o : nullptr, channels, hh);
      }
    });
  });
}

void tv_adjoint_gate_cpu(const at::Tensor& lam, const at::Tensor& gi, const at::Tensor& z, int64_t channels,
                         Act act, double scale, const at::Tensor& v_out, const at::Tensor& g_out,
                         const at::Tensor& a_out) {
  TORCH_CHECK(v_out.defined() == gi.defined(), "contres: tv_adjoint_gate writes v exactly when gi is given");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, lam.scalar_type(), "contres_tv_adjoint_gate_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* lamp = lam.const_data_ptr<scalar_t>();
    const scalar_t* gip = gi.defined() ? gi.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    scalar_t* vp = v_out.defined() ? v_out.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = g_out.mutable_data_ptr<scalar_t>();
    scalar_t* ap = a_out.defined() ? a_out.mutable_data_ptr<scalar_t>() : nullptr;
    const auto s = static_cast<opmath_t>(scale);
    for_pixel_chunks<scalar_t>(act, gi.defined(), a_out.defined(), lam.numel(), channels,
                               [&](auto a, auto with_gi, auto with_a, auto vec, int64_t begin, int64_t end) {
      std::vector<opmath_t> w(channels);  // this chunk's scratch for one pixel's w
      for (int64_t p = begin; p < end; ++p) {
        const int64_t o = p * channels;
        tv_adjoint_pixel<scalar_t, decltype(a)::value, decltype(with_gi)::value, decltype(with_a)::value,
                         decltype(vec)::value>(lamp + o, gip ? gip + o : nullptr, zp + o, vp ? vp + o : nullptr,
                                               gp + o, ap ? ap + o : nullptr, w.data(), channels, s);
      }
    });
  });
}

}  // namespace contres
