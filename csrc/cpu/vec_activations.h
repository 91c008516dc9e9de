// The activations on at::vec vectors, shared by the CPU passes. Include first: it sets CPU_CAPABILITY to AVX2
// when the build host has it (setup.py adds -mavx2 -mfma -mf16c), so that at::vec's AVX2 types, which then
// live in their own at::vec::AVX2 namespace, are the ones used.
#pragma once

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "../activations.h"

namespace contres {
namespace cpu {

using at::vec::Vectorized;

// The types the passes vectorise; the reduced ones run scalar loops with float accumulation.
template <typename T>
constexpr bool kVectorised = std::is_same_v<T, float> || std::is_same_v<T, double>;

// Activation<A>::f on a vector.
template <Act A, typename T>
Vectorized<T> act_vec(const Vectorized<T>& z) {
  if constexpr (A == Act::Identity) return z;
  else if constexpr (A == Act::Relu) return at::vec::clamp_min(z, Vectorized<T>(0));  // NaN passes, like f
  else if constexpr (A == Act::LeakyRelu)
    return Vectorized<T>::blendv(z * Vectorized<T>(kLeakySlope), z, z > Vectorized<T>(0));
  else if constexpr (A == Act::Tanh) return z.tanh();
  else return Vectorized<T>(1) / (Vectorized<T>(1) + z.neg().exp());
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

}  // namespace cpu
}  // namespace contres
