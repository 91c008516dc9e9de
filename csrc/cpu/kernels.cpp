// CPU implementations of the fused elementwise passes (see kernels.h), parallel over segments of the flat data
// with at::parallel_for. float and double use at::vec (AVX2 when the build host has it, see vec_activations.h);
// the reduced types run the same maths in scalar loops with float accumulation. The optional operands are
// template flags, so every inner loop is branch-free; only the (activation, aux) pairs the table in config.h
// can produce are instantiated.
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
#include <vector>

#include "../kernels.h"

namespace contres {
namespace {

using cpu::act_vec;
using cpu::df_value_vec;
using cpu::kVectorised;
using cpu::Vectorized;

// Work items: segments of the flat data, starting at multiples of 8 elements so that each owns whole mask bytes.
struct Segments {
  static constexpr int64_t kLength = 1 << 14;
  int64_t n, count;
  explicit Segments(int64_t numel) : n(numel), count((numel + kLength - 1) / kLength) {}
  int64_t begin(int64_t item) const { return item * kLength; }
  int64_t length(int64_t item) const { return std::min(kLength, n - begin(item)); }
  template <typename Fn>
  void parallel(const Fn& fn) const {  // fn(first element, elements) per segment
    at::parallel_for(0, count, 2, [&](int64_t b, int64_t e) {
      for (int64_t w = b; w < e; ++w) fn(begin(w), length(w));
    });
  }
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

// Bit t of mask[j] is Activation<A>::mask_bit(z[8j + t]), for the n elements of a segment.
template <Act A, typename T>
void pack_mask(const T* z, uint8_t* mask, int64_t n) {
  for (int64_t j = 0; 8 * j < n; ++j) {
    const int cnt = static_cast<int>(std::min<int64_t>(8, n - 8 * j));
    unsigned bits = 0;
    for (int t = 0; t < cnt; ++t) bits |= static_cast<unsigned>(Activation<A>::mask_bit(z[8 * j + t])) << t;
    mask[j] = static_cast<uint8_t>(bits);
  }
}

// The mask byte of 8 consecutive z: one compare and movemask with AVX2, which is most of the forward pass's time
// otherwise (measured: 4 of its 6 ms per 8 steps, B32 C32 32x32).
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

// The forward pass's operands for one segment (pointers already offset to it) and its flags.
template <typename T>
struct ForwardPtrs {
  const T* z;
  T *out, *out2, *val;
  const T *x0, *x1, *y0;
  uint8_t* mask;
};

template <typename scalar_t, Act A, Aux K, bool kOut, bool kX1, bool kOut2>
void forward_segment_scalar(const ForwardPtrs<scalar_t>& p, int64_t n, const std::array<at::opmath_type<scalar_t>, 4>& c) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t c0 = c[0], c1 = c[1], alpha = c[2], beta = c[3];
  if constexpr (kOut || kOut2 || K == Aux::Value) {
    for (int64_t i = 0; i < n; ++i) {
      const opmath_t f = Activation<A>::f(static_cast<opmath_t>(p.z[i]));
      if constexpr (K == Aux::Value) p.val[i] = static_cast<scalar_t>(f);
      opmath_t o = 0, o2 = 0;
      if constexpr (kOut) {
        o = c0 * static_cast<opmath_t>(p.x0[i]);
        if constexpr (kX1) o += c1 * static_cast<opmath_t>(p.x1[i]);
        o += alpha * f;
      }
      if constexpr (kOut2) o2 = static_cast<opmath_t>(p.y0[i]) + beta * f;
      if constexpr (kOut) p.out[i] = static_cast<scalar_t>(o);
      if constexpr (kOut2) p.out2[i] = static_cast<scalar_t>(o2);
    }
  }
  if constexpr (K == Aux::Mask) pack_mask<A>(p.z, p.mask, n);
}

template <typename T, Act A, Aux K, bool kOut, bool kX1, bool kOut2>
void forward_segment_vec(const ForwardPtrs<T>& p, int64_t n, const std::array<T, 4>& c) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  static_assert(8 % V == 0, "a vector must not straddle two mask bytes");
  const int64_t body = n / 8 * 8;
  const Vec c0(c[0]), c1(c[1]), alpha(c[2]), beta(c[3]);
  for (int64_t i = 0; i < body; i += 8) {
    if constexpr (kOut || kOut2 || K == Aux::Value) {
      for (int64_t j = i; j < i + 8; j += V) {
        const Vec f = act_vec<A>(Vec::loadu(p.z + j));
        if constexpr (K == Aux::Value) f.store(p.val + j);
        Vec o, o2;
        if constexpr (kOut) {
          Vec base = c0 * Vec::loadu(p.x0 + j);
          if constexpr (kX1) base = at::vec::fmadd(c1, Vec::loadu(p.x1 + j), base);
          o = at::vec::fmadd(alpha, f, base);
        }
        if constexpr (kOut2) o2 = at::vec::fmadd(beta, f, Vec::loadu(p.y0 + j));
        if constexpr (kOut) o.store(p.out + j);
        if constexpr (kOut2) o2.store(p.out2 + j);
      }
    }
    if constexpr (K == Aux::Mask) p.mask[i / 8] = mask_byte<A>(p.z + i);
  }
  ForwardPtrs<T> tail = p;
  tail.z += body;
  if (kOut) tail.out += body, tail.x0 += body;
  if (kX1) tail.x1 += body;
  if (kOut2) tail.out2 += body, tail.y0 += body;
  if (K == Aux::Value) tail.val += body;
  if (K == Aux::Mask) tail.mask += body / 8;
  forward_segment_scalar<T, A, K, kOut, kX1, kOut2>(tail, n - body, c);
}

template <typename scalar_t, Act A, Aux K, bool kOut, bool kX1, bool kOut2>
void forward_kernel(const ForwardPass& a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const ForwardPtrs<scalar_t> base{a.z.const_data_ptr<scalar_t>(),
                                   kOut ? a.comb.out.mutable_data_ptr<scalar_t>() : nullptr,
                                   kOut2 ? a.comb.out2.mutable_data_ptr<scalar_t>() : nullptr,
                                   K == Aux::Value ? a.aux.mutable_data_ptr<scalar_t>() : nullptr,
                                   kOut ? a.comb.x0.const_data_ptr<scalar_t>() : nullptr,
                                   kX1 ? a.comb.x1.const_data_ptr<scalar_t>() : nullptr,
                                   kOut2 ? a.comb.y0.const_data_ptr<scalar_t>() : nullptr,
                                   K == Aux::Mask ? a.aux.mutable_data_ptr<uint8_t>() : nullptr};
  const std::array<opmath_t, 4> c{static_cast<opmath_t>(a.comb.c0), static_cast<opmath_t>(a.comb.c1),
                                  static_cast<opmath_t>(a.comb.alpha), static_cast<opmath_t>(a.comb.beta)};
  Segments(a.z.numel()).parallel([&](int64_t e, int64_t n) {
    ForwardPtrs<scalar_t> p = base;
    p.z += e;
    if (kOut) p.out += e, p.x0 += e;
    if (kX1) p.x1 += e;
    if (kOut2) p.out2 += e, p.y0 += e;
    if (K == Aux::Value) p.val += e;
    if (K == Aux::Mask) p.mask += e / 8;
    if constexpr (kVectorised<scalar_t>)
      forward_segment_vec<scalar_t, A, K, kOut, kX1, kOut2>(p, n, c);
    else
      forward_segment_scalar<scalar_t, A, K, kOut, kX1, kOut2>(p, n, c);
  });
}

// Adjoint gate of one segment. Every operand of element i is read before anything of element i is written.
template <typename T>
struct GatePtrs {
  const T *lam, *mu, *sum_in, *val;
  const uint8_t* mask;
  T *g, *sum_out;
};

// The bias gradient of one segment: acc[c] += g of each element of channel c (channels_last: element i has channel
// i % C); c is the channel of the next element.
template <typename opmath_t>
struct BiasAcc {
  opmath_t* acc = nullptr;
  int64_t C = 0, c = 0;
  void add(opmath_t g) {
    acc[c] += g;
    if (++c == C) c = 0;
  }
};

template <typename scalar_t, Act A, Aux K, bool kMu, bool kSum, bool kBias>
void gate_segment_scalar(const GatePtrs<scalar_t>& p, int64_t n, at::opmath_type<scalar_t> c_mu,
                         at::opmath_type<scalar_t> scale, const at::opmath_type<scalar_t>* table,
                         BiasAcc<at::opmath_type<scalar_t>>& bias) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    opmath_t v = static_cast<opmath_t>(p.lam[i]);
    opmath_t m = 0, s = 0;
    if constexpr (kMu) {
      m = static_cast<opmath_t>(p.mu[i]);
      v += c_mu * m;
    }
    if constexpr (kSum) s = static_cast<opmath_t>(p.sum_in[i]) + m;
    opmath_t d;
    if constexpr (K == Aux::Mask) d = table[8 * p.mask[i / 8] + i % 8];
    else if constexpr (K == Aux::Value) d = Activation<A>::df_value(static_cast<opmath_t>(p.val[i]));
    else d = opmath_t(1);
    const scalar_t g = static_cast<scalar_t>(scale * d * v);
    p.g[i] = g;
    if constexpr (kSum) p.sum_out[i] = static_cast<scalar_t>(s);
    if constexpr (kBias) bias.add(static_cast<opmath_t>(g));
  }
}

template <typename T, Act A, Aux K, bool kMu, bool kSum, bool kBias>
void gate_segment_vec(const GatePtrs<T>& p, int64_t n, T c_mu, T scale, const T* table, BiasAcc<T>& bias) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  static_assert(8 % V == 0, "a vector must not straddle two mask bytes");
  const int64_t body = n / 8 * 8;
  const Vec cv(c_mu), sv(scale);
  const bool whole_vectors = bias.C % V == 0;  // then a vector holds channels c .. c + V - 1
  for (int64_t i = 0; i < body; i += V) {
    Vec v = Vec::loadu(p.lam + i), s;
    if constexpr (kMu) {
      const Vec m = Vec::loadu(p.mu + i);
      v = at::vec::fmadd(cv, m, v);
      if constexpr (kSum) s = Vec::loadu(p.sum_in + i) + m;
    }
    Vec d;
    if constexpr (K == Aux::Mask) d = Vec::loadu(table + 8 * p.mask[i / 8] + i % 8);
    else if constexpr (K == Aux::Value) d = df_value_vec<A>(Vec::loadu(p.val + i));
    else d = Vec(1);
    const Vec g = sv * d * v;
    g.store(p.g + i);
    if constexpr (kSum) s.store(p.sum_out + i);
    if constexpr (kBias) {
      if (whole_vectors) {
        (Vec::loadu(bias.acc + bias.c) + g).store(bias.acc + bias.c);
        bias.c += V;
        if (bias.c == bias.C) bias.c = 0;
      } else {
        for (int64_t t = 0; t < V; ++t) bias.add(p.g[i + t]);
      }
    }
  }
  GatePtrs<T> tail = p;
  tail.lam += body;
  tail.g += body;
  if (kMu) tail.mu += body;
  if (kSum) tail.sum_in += body, tail.sum_out += body;
  if (K == Aux::Value) tail.val += body;
  if (K == Aux::Mask) tail.mask += body / 8;
  gate_segment_scalar<T, A, K, kMu, kSum, kBias>(tail, n - body, c_mu, scale, table, bias);
}

// With kBias, each segment sums its g per channel into its own row of partial sums, reduced afterwards in segment
// order: the bias gradient is the same whatever the threads, and no pass reads g again.
template <typename scalar_t, Act A, Aux K, bool kMu, bool kSum, bool kBias>
void gate_kernel(const GatePass& a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const GatePtrs<scalar_t> base{a.lam.const_data_ptr<scalar_t>(),
                                kMu ? a.mu.const_data_ptr<scalar_t>() : nullptr,
                                kSum ? (a.sum_in.defined() ? a.sum_in : a.lam).const_data_ptr<scalar_t>() : nullptr,
                                K == Aux::Value ? a.aux.const_data_ptr<scalar_t>() : nullptr,
                                K == Aux::Mask ? a.aux.const_data_ptr<uint8_t>() : nullptr,
                                a.g.mutable_data_ptr<scalar_t>(),
                                kSum ? a.sum_out.mutable_data_ptr<scalar_t>() : nullptr};
  const opmath_t* table = K == Aux::Mask ? mask_derivative_table<opmath_t, A>() : nullptr;
  const auto c_mu = static_cast<opmath_t>(a.c_mu), scale = static_cast<opmath_t>(a.scale);
  const Segments seg(a.lam.numel());
  const int64_t C = a.channels;
  std::vector<opmath_t> partial(kBias ? seg.count * C : 0, opmath_t(0));
  seg.parallel([&](int64_t e, int64_t n) {
    GatePtrs<scalar_t> p = base;
    p.lam += e;
    p.g += e;
    if (kMu) p.mu += e;
    if (kSum) p.sum_in += e, p.sum_out += e;
    if (K == Aux::Value) p.val += e;
    if (K == Aux::Mask) p.mask += e / 8;
    BiasAcc<opmath_t> bias;
    if (kBias) bias.acc = partial.data() + (e / Segments::kLength) * C, bias.C = C, bias.c = e % C;
    if constexpr (kVectorised<scalar_t>)
      gate_segment_vec<scalar_t, A, K, kMu, kSum, kBias>(p, n, c_mu, scale, table, bias);
    else
      gate_segment_scalar<scalar_t, A, K, kMu, kSum, kBias>(p, n, c_mu, scale, table, bias);
  });
  if constexpr (kBias) {
    std::vector<opmath_t> total(C, opmath_t(0));
    for (int64_t w = 0; w < seg.count; ++w)
      for (int64_t c = 0; c < C; ++c) total[c] += partial[w * C + c];
    scalar_t* out = a.bias.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) out[c] = static_cast<scalar_t>(total[c]);
  }
}

template <typename Fn>
void dispatch_bool(bool value, const Fn& fn) {
  if (value) fn(std::true_type{});
  else fn(std::false_type{});
}

}  // namespace

void forward_pass_cpu(const ForwardPass& a) {
  const bool out = a.comb.out.defined(), x1 = out && a.comb.x1.defined(), out2 = a.comb.out2.defined();
  const Aux kind = a.aux.defined() ? a.aux_kind : Aux::None;
  if (!out && !out2 && kind == Aux::None) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.z.scalar_type(), "contres_forward_pass_cpu", [&] {
    dispatch_reachable<forward_pass_reachable>(a.act, kind, [&](auto act, auto aux) {
      constexpr Act A = decltype(act)::value;
      constexpr Aux K = decltype(aux)::value;
      dispatch_bool(out, [&](auto o) {
        dispatch_bool(x1, [&](auto with_x1) {
          dispatch_bool(out2, [&](auto o2) {
            forward_kernel<scalar_t, A, K, decltype(o)::value, decltype(o)::value && decltype(with_x1)::value,
                           decltype(o2)::value>(a);
          });
        });
      });
    });
  });
}

bool gate_pass_cpu(const GatePass& a) {
  const bool mu = a.mu.defined(), sum = a.sum_out.defined();
  const bool bias = a.bias.defined() && a.channels > 0 && a.bias.is_contiguous() && a.bias.numel() == a.channels;
  TORCH_CHECK(!sum || mu, "contres: internal error: the gate's running sum adds mu");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.lam.scalar_type(), "contres_gate_pass_cpu", [&] {
    dispatch_reachable<gate_pass_reachable>(a.act, a.aux_kind, [&](auto act, auto aux) {
      constexpr Act A = decltype(act)::value;
      constexpr Aux K = decltype(aux)::value;
      dispatch_bool(mu, [&](auto m) {
        dispatch_bool(sum, [&](auto s) {
          dispatch_bool(bias, [&](auto with_bias) {
            gate_kernel<scalar_t, A, K, decltype(m)::value, decltype(m)::value && decltype(s)::value,
                        decltype(with_bias)::value>(a);
          });
        });
      });
    });
  });
  return bias;
}

}  // namespace contres
