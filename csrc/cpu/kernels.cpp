// CPU implementations of the fused elementwise passes (see kernels.h), parallel over planes (or segments of
// them) with at::parallel_for. float and double use at::vec (AVX2 when the build host has it, see
// vec_activations.h); the reduced types run the same maths in scalar loops with float accumulation.
#include "vec_activations.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <type_traits>

#include "../kernels.h"

namespace contres {
namespace {

// Work items: a plane, or a segment of one when planes are large (a channels_last tensor is passed as one
// plane of B*C*H*W elements). Segments start at multiples of 8 elements, so each owns whole mask bytes.
struct Segments {
  int64_t hw, mbytes, per_plane, count;
  static constexpr int64_t kLength = 1 << 14;
  static constexpr int64_t kGrainElements = 1 << 15;

  Segments(int64_t planes, int64_t hw_)
      : hw(hw_), mbytes(mask_bytes(hw_)), per_plane(std::max<int64_t>(1, (hw_ + kLength - 1) / kLength)),
        count(planes * per_plane) {}
  int64_t plane(int64_t item) const { return item / per_plane; }
  int64_t begin(int64_t item) const { return (item % per_plane) * kLength; }  // element offset in its plane
  int64_t length(int64_t item) const { return std::min(kLength, hw - begin(item)); }
  int64_t grain() const { return std::max<int64_t>(1, kGrainElements / std::min(hw, kLength)); }
};

// act' for each of the 256 mask bytes, 8 values per byte, so a chunk of 8 elements reads a contiguous row.
template <typename opmath_t, Act A>
const opmath_t* mask_derivative_table() {
  static const std::array<opmath_t, 256 * 8> table = [] {
    std::array<opmath_t, 256 * 8> t{};
    for (int byte = 0; byte < 256; ++byte)
      for (int bit = 0; bit < 8; ++bit) t[byte * 8 + bit] = Activation<A>::template df_sign<opmath_t>((byte >> bit) & 1);
    return t;
  }();
  return table.data();
}

using cpu::act_vec;
using cpu::df_value_vec;
using cpu::kVectorised;
using cpu::Vectorized;

// Bit t of mask[j] is the sign bit of z[8j + t] (see Activation::mask_bit), for the n elements of a segment.
template <Act A, typename T>
void pack_mask(const T* z, uint8_t* mask, int64_t n) {
  for (int64_t j = 0; 8 * j < n; ++j) {
    const int cnt = static_cast<int>(std::min<int64_t>(8, n - 8 * j));
    unsigned bits = 0;
    for (int t = 0; t < cnt; ++t) bits |= static_cast<unsigned>(Activation<A>::mask_bit(z[8 * j + t])) << t;
    mask[j] = static_cast<uint8_t>(bits);
  }
}

// Forward of one segment, scalar: the reduced types, and the tails of the vectorised version. The flags are
// template parameters so that every inner loop is branch-free.
template <typename scalar_t, Act A, bool kOut, bool kMask, bool kValue>
void single_update_plane(const scalar_t* u, const scalar_t* z, scalar_t* out, uint8_t* mask, scalar_t* val,
                         int64_t n, at::opmath_type<scalar_t> h) {
  using opmath_t = at::opmath_type<scalar_t>;
  if constexpr (kOut || kValue) {
    for (int64_t i = 0; i < n; ++i) {
      const opmath_t a = Activation<A>::f(static_cast<opmath_t>(z[i]));
      if constexpr (kValue) val[i] = static_cast<scalar_t>(a);
      if constexpr (kOut) out[i] = static_cast<scalar_t>(static_cast<opmath_t>(u[i]) + h * a);
    }
  }
  if constexpr (kMask) pack_mask<A>(z, mask, n);
}

// The mask byte of 8 consecutive z (bit t = Activation<A>::mask_bit(z[t])): one compare and movemask with
// AVX2, which is most of the forward pass's time otherwise (measured: 4 of its 6 ms per 8 steps, B32 C32 32x32).
template <Act A, typename T>
uint8_t mask_byte(const T* z) {
#if defined(CPU_CAPABILITY_AVX2)
  // The predicates are mask_bit's: relu's !(z <= 0) is true for NaN (unordered), leaky_relu's z > 0 is not.
  constexpr int kPredicate = A == Act::Relu ? _CMP_NLE_UQ : _CMP_GT_OQ;
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<uint8_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(z), _mm256_setzero_ps(), kPredicate)));
  } else if constexpr (std::is_same_v<T, double>) {
    const __m256d zero = _mm256_setzero_pd();
    const int lo = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(z), zero, kPredicate));
    const int hi = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(z + 4), zero, kPredicate));
    return static_cast<uint8_t>(lo | (hi << 4));
  }
#endif
  uint8_t bits;
  pack_mask<A>(z, &bits, 8);
  return bits;
}

// Forward of one segment, vectorised (float, double): whole mask bytes with at::vec, the rest scalar.
template <typename T, Act A, bool kOut, bool kMask, bool kValue>
void single_update_plane_vec(const T* u, const T* z, T* out, uint8_t* mask, T* val, int64_t n, T h) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  static_assert(8 % V == 0, "a vector must not straddle two mask bytes");
  const int64_t body = n / 8 * 8;
  const Vec hv(h);
  for (int64_t i = 0; i < body; i += 8) {
    if constexpr (kOut || kValue) {
      for (int64_t j = i; j < i + 8; j += V) {
        const Vec a = act_vec<A>(Vec::loadu(z + j));
        if constexpr (kValue) a.store(val + j);
        if constexpr (kOut) at::vec::fmadd(hv, a, Vec::loadu(u + j)).store(out + j);
      }
    }
    if constexpr (kMask) mask[i / 8] = mask_byte<A>(z + i);
  }
  single_update_plane<T, A, kOut, kMask, kValue>(u + body, z + body, kOut ? out + body : nullptr,
                                                 kMask ? mask + body / 8 : nullptr, kValue ? val + body : nullptr,
                                                 n - body, h);
}

// Adjoint gate of one segment, scalar (the reduced types, and the tails of the vectorised version). Writing v
// over gi or g over lam is safe: each element is read before it is written.
template <typename scalar_t, Act A, Aux K, bool kGi, bool kV>
void adjoint_gate_plane(const scalar_t* lam, const scalar_t* gi, const uint8_t* mask, const scalar_t* val,
                        const at::opmath_type<scalar_t>* table, scalar_t* v_out, scalar_t* g_out, int64_t n,
                        at::opmath_type<scalar_t> scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    opmath_t v = static_cast<opmath_t>(lam[i]);
    if constexpr (kGi) v += static_cast<opmath_t>(gi[i]);
    if constexpr (kV) v_out[i] = static_cast<scalar_t>(v);
    opmath_t d;
    if constexpr (K == Aux::Mask) d = table[8 * mask[i / 8] + i % 8];
    else if constexpr (K == Aux::Value) d = Activation<A>::df_value(static_cast<opmath_t>(val[i]));
    else d = opmath_t(1);
    g_out[i] = static_cast<scalar_t>(scale * d * v);
  }
}

// Adjoint gate of one segment, vectorised (float, double): whole mask bytes with at::vec, the rest scalar.
template <typename T, Act A, Aux K, bool kGi, bool kV>
void adjoint_gate_plane_vec(const T* lam, const T* gi, const uint8_t* mask, const T* val, const T* table, T* v_out,
                            T* g_out, int64_t n, T scale) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  static_assert(8 % V == 0, "a vector must not straddle two mask bytes");
  const int64_t body = n / 8 * 8;
  const Vec sv(scale);
  for (int64_t i = 0; i < body; i += V) {
    Vec v = Vec::loadu(lam + i);
    if constexpr (kGi) v = v + Vec::loadu(gi + i);
    if constexpr (kV) v.store(v_out + i);
    Vec d;
    if constexpr (K == Aux::Mask) d = Vec::loadu(table + 8 * mask[i / 8] + i % 8);
    else if constexpr (K == Aux::Value) d = df_value_vec<A>(Vec::loadu(val + i));
    else d = Vec(1);
    (sv * d * v).store(g_out + i);
  }
  adjoint_gate_plane<T, A, K, kGi, kV>(lam + body, kGi ? gi + body : nullptr,
                                       K == Aux::Mask ? mask + body / 8 : nullptr,
                                       K == Aux::Value ? val + body : nullptr, table, kV ? v_out + body : nullptr,
                                       g_out + body, n - body, scale);
}

template <typename scalar_t, Act A, bool kOut, bool kMask, bool kValue>
void single_update_kernel(const at::Tensor& u, const at::Tensor& z, double h, const at::Tensor& u_next,
                          const at::Tensor& aux_out) {
  const Segments seg(u.size(0) * u.size(1), u.size(2) * u.size(3));
  const scalar_t* up = u.const_data_ptr<scalar_t>();
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  scalar_t* outp = kOut ? u_next.mutable_data_ptr<scalar_t>() : nullptr;
  uint8_t* maskp = kMask ? aux_out.mutable_data_ptr<uint8_t>() : nullptr;
  scalar_t* valp = kValue ? aux_out.mutable_data_ptr<scalar_t>() : nullptr;
  const auto hh = static_cast<at::opmath_type<scalar_t>>(h);
  at::parallel_for(0, seg.count, seg.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t e = seg.plane(w) * seg.hw + seg.begin(w), n = seg.length(w);
      auto* const o = outp + (kOut ? e : 0);
      auto* const m = maskp + (kMask ? seg.plane(w) * seg.mbytes + seg.begin(w) / 8 : 0);
      auto* const v = valp + (kValue ? e : 0);
      if constexpr (kVectorised<scalar_t>)
        single_update_plane_vec<scalar_t, A, kOut, kMask, kValue>(up + e, zp + e, o, m, v, n, hh);
      else
        single_update_plane<scalar_t, A, kOut, kMask, kValue>(up + e, zp + e, o, m, v, n, hh);
    }
  });
}

template <typename scalar_t, Act A, Aux K, bool kGi, bool kV>
void adjoint_gate_kernel(const at::Tensor& lam, const at::Tensor& gi, const at::Tensor& aux, double scale,
                         const at::Tensor& v_out, const at::Tensor& g_out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Segments seg(lam.size(0) * lam.size(1), lam.size(2) * lam.size(3));
  const scalar_t* lamp = lam.const_data_ptr<scalar_t>();
  const scalar_t* gip = kGi ? gi.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* vp = kV ? v_out.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gp = g_out.mutable_data_ptr<scalar_t>();
  const uint8_t* maskp = K == Aux::Mask ? aux.const_data_ptr<uint8_t>() : nullptr;
  const scalar_t* valp = K == Aux::Value ? aux.const_data_ptr<scalar_t>() : nullptr;
  const opmath_t* table = K == Aux::Mask ? mask_derivative_table<opmath_t, A>() : nullptr;
  const opmath_t s = static_cast<opmath_t>(scale);

  at::parallel_for(0, seg.count, seg.grain(), [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t e = seg.plane(w) * seg.hw + seg.begin(w), n = seg.length(w);
      const scalar_t* const gi_p = kGi ? gip + e : nullptr;
      const uint8_t* const mask_p = K == Aux::Mask ? maskp + seg.plane(w) * seg.mbytes + seg.begin(w) / 8 : nullptr;
      const scalar_t* const val_p = K == Aux::Value ? valp + e : nullptr;
      scalar_t* const v_p = kV ? vp + e : nullptr;
      if constexpr (kVectorised<scalar_t>)
        adjoint_gate_plane_vec<scalar_t, A, K, kGi, kV>(lamp + e, gi_p, mask_p, val_p, table, v_p, gp + e, n, s);
      else
        adjoint_gate_plane<scalar_t, A, K, kGi, kV>(lamp + e, gi_p, mask_p, val_p, table, v_p, gp + e, n, s);
    }
  });
}

}  // namespace

void single_update_cpu(const at::Tensor& u, const at::Tensor& z, double h, Act act, Aux aux_kind,
                       const at::Tensor& u_next, const at::Tensor& aux_out) {
  const bool out = u_next.defined(), mask = aux_kind == Aux::Mask && aux_out.defined(),
             value = aux_kind == Aux::Value && aux_out.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u.scalar_type(), "contres_single_update_cpu", [&] {
    dispatch_activation(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      if (out && mask) single_update_kernel<scalar_t, A, true, true, false>(u, z, h, u_next, aux_out);
      else if (out && value) single_update_kernel<scalar_t, A, true, false, true>(u, z, h, u_next, aux_out);
      else if (out) single_update_kernel<scalar_t, A, true, false, false>(u, z, h, u_next, aux_out);
      else if (mask) single_update_kernel<scalar_t, A, false, true, false>(u, z, h, u_next, aux_out);
      else if (value) single_update_kernel<scalar_t, A, false, false, true>(u, z, h, u_next, aux_out);
    });
  });
}

void adjoint_gate_cpu(const at::Tensor& lam, const at::Tensor& gi, const at::Tensor& aux, Aux aux_kind, Act act,
                      double scale, const at::Tensor& v_out, const at::Tensor& g_out) {
  TORCH_CHECK(v_out.defined() == gi.defined(), "contres: adjoint_gate writes v exactly when gi is given");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, lam.scalar_type(), "contres_adjoint_gate_cpu", [&] {
    dispatch_activation(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      auto run = [&](auto kind, auto with_gi) {
        adjoint_gate_kernel<scalar_t, A, decltype(kind)::value, decltype(with_gi)::value,
                            decltype(with_gi)::value>(lam, gi, aux, scale, v_out, g_out);
      };
      auto by_gi = [&](auto kind) {
        if (gi.defined()) run(kind, std::true_type{});
        else run(kind, std::false_type{});
      };
      switch (aux_kind) {
        case Aux::Mask: by_gi(std::integral_constant<Aux, Aux::Mask>{}); break;
        case Aux::Value: by_gi(std::integral_constant<Aux, Aux::Value>{}); break;
        default: by_gi(std::integral_constant<Aux, Aux::None>{}); break;
      }
    });
  });
}

}  // namespace contres
