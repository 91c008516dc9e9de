// CPU implementations of the fused elementwise passes (see kernels.h), parallel over segments of the flat data
// with at::parallel_for. Every dtype pair (vec.h's DtypePair: float, double, bf16, fp16, and float states with
// bf16 or fp16 convolution operands) runs on at::vec: each operand is loaded as vectors of the opmath type,
// computed on there, and stored back in its own dtype, 16 elements (two mask bytes) at a time; a segment's last
// n % 16 elements run the same maths in scalar code. The optional operands are template flags, so every inner
// loop is branch-free; only the (activation, aux) pairs the table in config.h can produce are instantiated.
#include "vec.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "../kernels.h"

namespace contres {
namespace {

using cpu::act_vec;
using cpu::BlockVecs;
using cpu::kBlock;
using cpu::load_block;
using cpu::store_block;
using cpu::df_value_vec;
using cpu::mask_bits;
using cpu::OpVec;
using cpu::shifted;

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

// ------------------------------------------------------------------------------------------------ forward pass

// The forward pass's operands (kernels.h: z, the Value aux and out_low in the convolution dtype L, the rest in
// the state dtype S), offset to one segment by at().
template <typename S, typename L>
struct ForwardPtrs {
  const L* z;
  L *val, *out_low;
  S *out, *out2;
  const S *x0, *x1, *y0;
  uint8_t* mask;
  ForwardPtrs at(int64_t e) const {
    return {z + e, shifted(val, e), shifted(out_low, e), shifted(out, e), shifted(out2, e),
            shifted(x0, e), shifted(x1, e), shifted(y0, e), mask ? mask + e / 8 : mask};
  }
};

// kOut / kOutLow: out / out_low written (out = c0 x0 [+ c1 x1] + alpha f, either dtype); kOut2: out2 = y0 + beta f.
template <typename S, typename L, Act A, Aux K, bool kOut, bool kOutLow, bool kX1, bool kOut2>
void forward_segment_scalar(const ForwardPtrs<S, L>& p, int64_t n, const std::array<at::opmath_type<S>, 4>& c) {
  using opmath_t = at::opmath_type<S>;
  const opmath_t c0 = c[0], c1 = c[1], alpha = c[2], beta = c[3];
  if constexpr (kOut || kOutLow || kOut2 || K == Aux::Value) {
    for (int64_t i = 0; i < n; ++i) {
      const opmath_t f = Activation<A>::f(static_cast<opmath_t>(p.z[i]));
      if constexpr (K == Aux::Value) p.val[i] = static_cast<L>(f);
      opmath_t o = 0, o2 = 0;
      if constexpr (kOut || kOutLow) {
        o = c0 * static_cast<opmath_t>(p.x0[i]);
        if constexpr (kX1) o += c1 * static_cast<opmath_t>(p.x1[i]);
        o += alpha * f;
      }
      if constexpr (kOut2) o2 = static_cast<opmath_t>(p.y0[i]) + beta * f;
      if constexpr (kOut) p.out[i] = static_cast<S>(o);
      if constexpr (kOutLow) p.out_low[i] = static_cast<L>(o);
      if constexpr (kOut2) p.out2[i] = static_cast<S>(o2);
    }
  }
  if constexpr (K == Aux::Mask) {
    for (int64_t j = 0; 8 * j < n; ++j) {
      const int cnt = static_cast<int>(std::min<int64_t>(8, n - 8 * j));
      unsigned bits = 0;
      for (int t = 0; t < cnt; ++t) bits |= static_cast<unsigned>(Activation<A>::mask_bit(p.z[8 * j + t])) << t;
      p.mask[j] = static_cast<uint8_t>(bits);
    }
  }
}

template <typename S, typename L, Act A, Aux K, bool kOut, bool kOutLow, bool kX1, bool kOut2>
void forward_segment(const ForwardPtrs<S, L>& p, int64_t n, const std::array<at::opmath_type<S>, 4>& c) {
  using Vec = OpVec<S>;
  using Vecs = BlockVecs<S>;
  constexpr int64_t V = Vec::size();
  const int64_t body = n / kBlock * kBlock;
  const Vec c0(c[0]), c1(c[1]), alpha(c[2]), beta(c[3]);
  for (int64_t i = 0; i < body; i += kBlock) {
    const Vecs z = load_block(p.z + i);
    if constexpr (K == Aux::Mask) {
      unsigned bits = 0;
      for (size_t j = 0; j < z.size(); ++j) bits |= mask_bits<A>(z[j]) << (j * V);
      p.mask[i / 8] = static_cast<uint8_t>(bits), p.mask[i / 8 + 1] = static_cast<uint8_t>(bits >> 8);
    }
    if constexpr (kOut || kOutLow || kOut2 || K == Aux::Value) {
      Vecs f, o, o2;
      for (size_t j = 0; j < z.size(); ++j) f[j] = act_vec<A>(z[j]);
      if constexpr (kOut || kOutLow) {
        const Vecs x0 = load_block(p.x0 + i);
        Vecs x1;
        if constexpr (kX1) x1 = load_block(p.x1 + i);
        for (size_t j = 0; j < z.size(); ++j) {
          Vec base = c0 * x0[j];
          if constexpr (kX1) base = at::vec::fmadd(c1, x1[j], base);
          o[j] = at::vec::fmadd(alpha, f[j], base);
        }
      }
      if constexpr (kOut2) {
        const Vecs y0 = load_block(p.y0 + i);
        for (size_t j = 0; j < z.size(); ++j) o2[j] = at::vec::fmadd(beta, f[j], y0[j]);
      }
      // Every operand of these elements is read: the outputs may alias the inputs they replace.
      if constexpr (K == Aux::Value) store_block(p.val + i, f);
      if constexpr (kOut) store_block(p.out + i, o);
      if constexpr (kOutLow) store_block(p.out_low + i, o);
      if constexpr (kOut2) store_block(p.out2 + i, o2);
    }
  }
  forward_segment_scalar<S, L, A, K, kOut, kOutLow, kX1, kOut2>(p.at(body), n - body, c);
}

template <typename S, typename L, Act A, Aux K, bool kOut, bool kOutLow, bool kX1, bool kOut2>
void forward_kernel(const ForwardPass& a) {
  using opmath_t = at::opmath_type<S>;
  const Combination& comb = a.comb;
  const ForwardPtrs<S, L> base{a.z.const_data_ptr<L>(),
                               K == Aux::Value ? a.aux.mutable_data_ptr<L>() : nullptr,
                               kOutLow ? comb.out_low.mutable_data_ptr<L>() : nullptr,
                               kOut ? comb.out.mutable_data_ptr<S>() : nullptr,
                               kOut2 ? comb.out2.mutable_data_ptr<S>() : nullptr,
                               kOut || kOutLow ? comb.x0.const_data_ptr<S>() : nullptr,
                               kX1 ? comb.x1.const_data_ptr<S>() : nullptr,
                               kOut2 ? comb.y0.const_data_ptr<S>() : nullptr,
                               K == Aux::Mask ? a.aux.mutable_data_ptr<uint8_t>() : nullptr};
  const std::array<opmath_t, 4> c{static_cast<opmath_t>(comb.c0), static_cast<opmath_t>(comb.c1),
                                  static_cast<opmath_t>(comb.alpha), static_cast<opmath_t>(comb.beta)};
  Segments(a.z.numel()).parallel([&](int64_t e, int64_t n) {
    forward_segment<S, L, A, K, kOut, kOutLow, kX1, kOut2>(base.at(e), n, c);
  });
}

// ----------------------------------------------------------------------------------------------- adjoint gate

// The gate's operands (kernels.h: lam and the running sums in the state dtype S, mu, g and the Value aux in the
// convolution dtype L). Every operand of element i is read before anything of element i is written.
template <typename S, typename L>
struct GatePtrs {
  const S *lam, *sum_in;
  const L *mu, *val;
  const uint8_t* mask;
  L* g;
  S* sum_out;
  GatePtrs at(int64_t e) const {
    return {lam + e, shifted(sum_in, e), shifted(mu, e), shifted(val, e), mask ? mask + e / 8 : mask, g + e,
            shifted(sum_out, e)};
  }
};

// The bias gradient of one segment: acc[c] += g of each element of channel c (channels_last: element i has channel
// i % C); c is the channel of the next element. g is summed before it is rounded to L.
template <typename opmath_t>
struct BiasAcc {
  opmath_t* acc = nullptr;
  int64_t C = 0, c = 0;
  void add(opmath_t g) {
    acc[c] += g;
    if (++c == C) c = 0;
  }
};

template <typename S, typename L, Act A, Aux K, bool kMu, bool kSum, bool kBias>
void gate_segment_scalar(const GatePtrs<S, L>& p, int64_t n, at::opmath_type<S> c_mu, at::opmath_type<S> scale,
                         const at::opmath_type<S>* table, BiasAcc<at::opmath_type<S>>& bias) {
  using opmath_t = at::opmath_type<S>;
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
    const opmath_t g = scale * d * v;
    p.g[i] = static_cast<L>(g);
    if constexpr (kSum) p.sum_out[i] = static_cast<S>(s);
    if constexpr (kBias) bias.add(g);
  }
}

template <typename S, typename L, Act A, Aux K, bool kMu, bool kSum, bool kBias>
void gate_segment(const GatePtrs<S, L>& p, int64_t n, at::opmath_type<S> c_mu, at::opmath_type<S> scale,
                  const at::opmath_type<S>* table, BiasAcc<at::opmath_type<S>>& bias) {
  using Vec = OpVec<S>;
  using Vecs = BlockVecs<S>;
  constexpr int64_t V = Vec::size();
  const int64_t body = n / kBlock * kBlock;
  const Vec cv(c_mu), sv(scale);
  const bool whole_vectors = bias.C % V == 0;  // then a vector holds channels c .. c + V - 1
  for (int64_t i = 0; i < body; i += kBlock) {
    Vecs v = load_block(p.lam + i), s, d, g;
    if constexpr (kMu) {
      const Vecs m = load_block(p.mu + i);
      Vecs in;
      if constexpr (kSum) in = load_block(p.sum_in + i);
      for (size_t j = 0; j < v.size(); ++j) {
        v[j] = at::vec::fmadd(cv, m[j], v[j]);
        if constexpr (kSum) s[j] = in[j] + m[j];
      }
    }
    if constexpr (K == Aux::Value) d = load_block(p.val + i);
    for (size_t j = 0; j < v.size(); ++j) {
      const int64_t e = i + static_cast<int64_t>(j) * V;  // the first element of vector j
      if constexpr (K == Aux::Mask) d[j] = Vec::loadu(table + 8 * p.mask[e / 8] + e % 8);
      else if constexpr (K == Aux::Value) d[j] = df_value_vec<A>(d[j]);
      else d[j] = Vec(1);
      g[j] = sv * d[j] * v[j];
    }
    store_block(p.g + i, g);
    if constexpr (kSum) store_block(p.sum_out + i, s);
    if constexpr (kBias) {
      for (size_t j = 0; j < g.size(); ++j) {
        if (whole_vectors) {
          (Vec::loadu(bias.acc + bias.c) + g[j]).store(bias.acc + bias.c);
          bias.c += V;
          if (bias.c == bias.C) bias.c = 0;
        } else {
          at::opmath_type<S> lanes[V];
          g[j].store(lanes);
          for (int64_t t = 0; t < V; ++t) bias.add(lanes[t]);
        }
      }
    }
  }
  gate_segment_scalar<S, L, A, K, kMu, kSum, kBias>(p.at(body), n - body, c_mu, scale, table, bias);
}

// With kBias, each segment sums its g per channel into its own row of partial sums, reduced afterwards in segment
// order: the bias gradient is the same whatever the threads, and no pass reads g again.
template <typename S, typename L, Act A, Aux K, bool kMu, bool kSum, bool kBias>
void gate_kernel(const GatePass& a) {
  using opmath_t = at::opmath_type<S>;
  const GatePtrs<S, L> base{a.lam.const_data_ptr<S>(),
                            kSum ? (a.sum_in.defined() ? a.sum_in : a.lam).const_data_ptr<S>() : nullptr,
                            kMu ? a.mu.const_data_ptr<L>() : nullptr,
                            K == Aux::Value ? a.aux.const_data_ptr<L>() : nullptr,
                            K == Aux::Mask ? a.aux.const_data_ptr<uint8_t>() : nullptr,
                            a.g.mutable_data_ptr<L>(),
                            kSum ? a.sum_out.mutable_data_ptr<S>() : nullptr};
  const opmath_t* table = K == Aux::Mask ? mask_derivative_table<opmath_t, A>() : nullptr;
  const auto c_mu = static_cast<opmath_t>(a.c_mu), scale = static_cast<opmath_t>(a.scale);
  const Segments seg(a.lam.numel());
  const int64_t C = a.channels;
  std::vector<opmath_t> partial(kBias ? seg.count * C : 0, opmath_t(0));
  seg.parallel([&](int64_t e, int64_t n) {
    BiasAcc<opmath_t> bias;
    if (kBias) bias.acc = partial.data() + (e / Segments::kLength) * C, bias.C = C, bias.c = e % C;
    gate_segment<S, L, A, K, kMu, kSum, kBias>(base.at(e), n, c_mu, scale, table, bias);
  });
  if constexpr (kBias) {
    std::vector<opmath_t> total(C, opmath_t(0));
    for (int64_t w = 0; w < seg.count; ++w)
      for (int64_t c = 0; c < C; ++c) total[c] += partial[w * C + c];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.bias.scalar_type(), "contres_gate_bias", [&] {
      scalar_t* out = a.bias.mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) out[c] = static_cast<scalar_t>(total[c]);
    });
  }
}

template <typename Fn>
void dispatch_bool(bool value, const Fn& fn) {
  if (value) fn(std::true_type{});
  else fn(std::false_type{});
}

}  // namespace

void forward_pass_cpu(const ForwardPass& a) {
  const Combination& comb = a.comb;
  const bool out = comb.out.defined(), out_low = comb.out_low.defined(), x1 = (out || out_low) && comb.x1.defined();
  const bool out2 = comb.out2.defined();
  const Aux kind = a.aux.defined() ? a.aux_kind : Aux::None;
  if (!out && !out_low && !out2 && kind == Aux::None) return;
  const at::ScalarType conv = a.z.scalar_type(), state = comb.state_dtype(conv);
  cpu::dispatch_dtypes(state, conv, "contres_forward_pass_cpu", [&](auto types) {
    using S = typename decltype(types)::state_t;
    using L = typename decltype(types)::conv_t;
    constexpr bool kMixed = !std::is_same_v<S, L>;
    TORCH_CHECK(kMixed || !out_low, "contres: internal error: out_low is the convolution-dtype copy of a mixed "
                "precision pass");
    dispatch_reachable<forward_pass_reachable>(a.act, kind, [&](auto act, auto aux) {
      constexpr Act A = decltype(act)::value;
      constexpr Aux K = decltype(aux)::value;
      dispatch_bool(out, [&](auto o) {
        dispatch_bool(kMixed && out_low, [&](auto ol) {
          dispatch_bool(x1, [&](auto with_x1) {
            dispatch_bool(out2, [&](auto o2) {
              constexpr bool kOutLow = kMixed && decltype(ol)::value;
              forward_kernel<S, L, A, K, decltype(o)::value, kOutLow,
                             (decltype(o)::value || kOutLow) && decltype(with_x1)::value, decltype(o2)::value>(a);
            });
          });
        });
      });
    });
  });
}

void activation_pass_cpu(const at::Tensor& z, Act act, const at::Tensor& a) {
  cpu::dispatch_dtypes(z.scalar_type(), z.scalar_type(), "contres_activation_pass_cpu", [&](auto types) {
    using L = typename decltype(types)::conv_t;
    dispatch_layer_activation(act, [&](auto tag) {
      ForwardPass pass;
      pass.z = z, pass.act = act, pass.aux_kind = Aux::Value, pass.aux = a;
      forward_kernel<L, L, decltype(tag)::value, Aux::Value, false, false, false, false>(pass);
    });
  });
}

bool gate_pass_cpu(const GatePass& a) {
  const bool mu = a.mu.defined(), sum = a.sum_out.defined();
  const bool bias = a.bias.defined() && a.channels > 0 && a.bias.is_contiguous() && a.bias.numel() == a.channels;
  TORCH_CHECK(!sum || mu, "contres: internal error: the gate's running sum adds mu");
  cpu::dispatch_dtypes(a.lam.scalar_type(), a.g.scalar_type(), "contres_gate_pass_cpu", [&](auto types) {
    using S = typename decltype(types)::state_t;
    using L = typename decltype(types)::conv_t;
    dispatch_reachable<gate_pass_reachable>(a.act, a.aux_kind, [&](auto act, auto aux) {
      constexpr Act A = decltype(act)::value;
      constexpr Aux K = decltype(aux)::value;
      dispatch_bool(mu, [&](auto m) {
        dispatch_bool(sum, [&](auto s) {
          dispatch_bool(bias, [&](auto with_bias) {
            gate_kernel<S, L, A, K, decltype(m)::value, decltype(m)::value && decltype(s)::value,
                        decltype(with_bias)::value>(a);
          });
        });
      });
    });
  });
  return bias;
}

}  // namespace contres
