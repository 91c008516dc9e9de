// The at::vec building blocks of the CPU passes: the dtype pairs a pass runs in (kernels.h, "Precision"), loads
// and stores of each dtype as vectors of its opmath type (float for float, bf16 and fp16; double for double), and
// the activations on those vectors. Every pass computes and accumulates in the opmath type whatever it loads and
// stores, so a bf16 or fp16 pass moves half the bytes of its float twin for the same arithmetic.
//
// Include first: it sets CPU_CAPABILITY to AVX2 when the build host has it (setup.py adds -mavx2 -mfma -mf16c),
// so that at::vec's AVX2 types, which then live in their own at::vec::AVX2 namespace, are the ones used.
#pragma once

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <array>
#include <type_traits>

#include "../activations.h"

namespace contres {
namespace cpu {

using at::vec::Vectorized;

// ------------------------------------------------------------------------------------------------ dtype pairs

// The dtypes of one pass: S of its state operands, L of its convolution operands (kernels.h says which is
// which). S == L, or S = float with L = bf16 or fp16 (mixed precision); both share one opmath type.
template <typename S, typename L>
struct DtypePair {
  using state_t = S;
  using conv_t = L;
  using opmath_t = at::opmath_type<S>;
  static_assert(std::is_same_v<opmath_t, at::opmath_type<L>>, "a pass computes in one opmath type");
};

// Calls fn(DtypePair<S, L>{}) for the C++ types of (state, conv); anything else is an internal error.
template <typename Fn>
void dispatch_dtypes(at::ScalarType state, at::ScalarType conv, const char* pass, const Fn& fn) {  // pass: for errors
  if (state == conv) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, state, "contres_cpu_pass",
                                    [&] { fn(DtypePair<scalar_t, scalar_t>{}); });
    return;
  }
  if (state == at::kFloat && conv == at::kBFloat16) return fn(DtypePair<float, c10::BFloat16>{});
  if (state == at::kFloat && conv == at::kHalf) return fn(DtypePair<float, c10::Half>{});
  TORCH_CHECK(false, "contres: internal error: ", pass, " has no kernel for state dtype ", c10::toString(state),
              " with convolution dtype ", c10::toString(conv));
}

// ------------------------------------------------------------------------------------------- loads and stores

template <typename T>
using OpVec = Vectorized<at::opmath_type<T>>;  // one vector of T's opmath type: 8 floats or 4 doubles with AVX2

template <typename T>
constexpr bool kReduced = !std::is_same_v<T, at::opmath_type<T>>;

// OpVec<T>::size() elements of T from p (unaligned), widened to the opmath type.
template <typename T>
OpVec<T> load_vec(const T* p) {
  if constexpr (kReduced<T>) {
    Vectorized<float> v;
    at::vec::load_to_float(p, v);
    return v;
  } else {
    return OpVec<T>::loadu(p);
  }
}

// Stores OpVec<T>::size() elements of T at p (unaligned), rounded to nearest even for the reduced types.
template <typename T>
void store_vec(T* p, const OpVec<T>& v) {
  if constexpr (kReduced<T>) {
#if defined(CPU_CAPABILITY_AVX2)
    // 8 lanes to 16 bytes; at::vec's store(p, count) of a half-full reduced vector goes through a stack copy.
    __m128i packed;
    if constexpr (std::is_same_v<T, c10::BFloat16>) packed = at::vec::cvtfp32_bf16(__m256(v));
    else packed = at::vec::cvtfp32_fp16(__m256(v));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
#else
    at::vec::convert_from_float<T>(v, v).store(p, OpVec<T>::size());
#endif
  } else {
    v.store(p);
  }
}

// The elementwise passes' unit: 16 elements as opmath vectors (2 of floats, 4 of doubles), so that a reduced type
// converts 16 lanes per 32-byte load or store (the conversions, not the bytes, bound a reduced pass on AVX2).
constexpr int64_t kBlock = 16;

template <typename T>
using BlockVecs = std::array<OpVec<T>, kBlock / OpVec<T>::size()>;

template <typename T>
BlockVecs<T> load_block(const T* p) {
  BlockVecs<T> v;
  if constexpr (kReduced<T>) {
    at::vec::load_to_float(p, v[0], v[1]);
  } else {
    for (size_t j = 0; j < v.size(); ++j) v[j] = OpVec<T>::loadu(p + j * OpVec<T>::size());
  }
  return v;
}

template <typename T>
void store_block(T* p, const BlockVecs<T>& v) {
  if constexpr (kReduced<T>) {
    at::vec::convert_from_float<T>(v[0], v[1]).store(p);
  } else {
    for (size_t j = 0; j < v.size(); ++j) v[j].store(p + j * OpVec<T>::size());
  }
}

// An optional operand's pointer moved by `by` elements (null stays null).
template <typename T>
T* shifted(T* p, int64_t by) {
  return p ? p + by : p;
}

// ------------------------------------------------------------------------------------------------ activations

// Activation<A>::f on a vector.
template <Act A, typename T>
Vectorized<T> act_vec(const Vectorized<T>& z) {
  if constexpr (A == Act::Identity) return z;
  else if constexpr (A == Act::Relu) return at::vec::clamp_min(z, Vectorized<T>(0));  // NaN passes, like f
  else if constexpr (A == Act::LeakyRelu)
    return Vectorized<T>::blendv(z * Vectorized<T>(kLeakySlope), z, z > Vectorized<T>(0));
  else if constexpr (A == Act::Tanh) return z.tanh();
  else if constexpr (A == Act::Sigmoid) return Vectorized<T>(1) / (Vectorized<T>(1) + z.neg().exp());
  else return Vectorized<T>::blendv(z.exp().log1p(), z, z > Vectorized<T>(kSoftplusThreshold));
}

// Activation<Softplus>::df on a vector (from z).
template <typename T>
Vectorized<T> softplus_df_vec(const Vectorized<T>& z) {
  const Vectorized<T> e = z.exp(), one(1);
  return Vectorized<T>::blendv(e / (e + one), one, z > Vectorized<T>(kSoftplusThreshold));
}

// Activation<A>::df_value on a vector: act' from a = act(z).
template <Act A, typename T>
Vectorized<T> df_value_vec(const Vectorized<T>& a) {
  const Vectorized<T> one(1);
  if constexpr (A == Act::Identity) return one;
  else if constexpr (A == Act::Relu) return Vectorized<T>::blendv(one, Vectorized<T>(0), a <= Vectorized<T>(0));
  else if constexpr (A == Act::LeakyRelu)
    return Vectorized<T>::blendv(Vectorized<T>(kLeakySlope), one, a > Vectorized<T>(0));
  else if constexpr (A == Act::Tanh) return one - a * a;
  else return a * (one - a);
}

// Activation<A>::mask_bit of each lane of z: bit t is lane t's. One compare and movemask with AVX2.
template <Act A, typename T>
unsigned mask_bits(const Vectorized<T>& z) {
#if defined(CPU_CAPABILITY_AVX2)
  // The predicates are mask_bit's: relu's !(z <= 0) is true for NaN (unordered), leaky_relu's z > 0 is not.
  constexpr int kPredicate = A == Act::Relu ? _CMP_NLE_UQ : _CMP_GT_OQ;
  if constexpr (std::is_same_v<T, float>)
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(__m256(z), _mm256_setzero_ps(), kPredicate)));
  else if constexpr (std::is_same_v<T, double>)
    return static_cast<unsigned>(_mm256_movemask_pd(_mm256_cmp_pd(__m256d(z), _mm256_setzero_pd(), kPredicate)));
#endif
  T lanes[Vectorized<T>::size()];
  z.store(lanes);
  unsigned bits = 0;
  for (int t = 0; t < Vectorized<T>::size(); ++t) bits |= static_cast<unsigned>(Activation<A>::mask_bit(lanes[t])) << t;
  return bits;
}

}  // namespace cpu
}  // namespace contres
