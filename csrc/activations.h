// Activation functors shared by the CPU and CUDA kernels: act(z), and act' either from the sign of z
// (relu, leaky_relu: one bit per element is enough) or from the value a = act(z) (tanh, sigmoid), which
// is what PyTorch's own backward formulas use, so the fused gradients round like autograd's.
#pragma once

#include <c10/macros/Macros.h>

#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "config.h"

namespace contres {

constexpr double kTvEps = 1e-3;  // the "tv" normalisation z / sqrt(sum_c z^2 + kTvEps); reference.TV_EPS

constexpr double kLeakySlope = 0.01;

template <Act A>
struct Activation;

template <>
struct Activation<Act::Identity> {
  template <typename T> C10_HOST_DEVICE static T f(T z) { return z; }
  template <typename T> C10_HOST_DEVICE static bool mask_bit(T) { return true; }
  template <typename T> C10_HOST_DEVICE static T df_sign(bool) { return T(1); }
  template <typename T> C10_HOST_DEVICE static T df_value(T) { return T(1); }
};

template <>
struct Activation<Act::Relu> {
  template <typename T> C10_HOST_DEVICE static T f(T z) { return z <= T(0) ? T(0) : z; }  // NaN passes through, like torch.relu
  // Like torch's threshold_backward, the gradient passes where z (or a) is not <= 0, NaN included.
  template <typename T> C10_HOST_DEVICE static bool mask_bit(T z) { return !(z <= T(0)); }
  template <typename T> C10_HOST_DEVICE static T df_sign(bool positive) { return positive ? T(1) : T(0); }
  template <typename T> C10_HOST_DEVICE static T df_value(T a) { return !(a <= T(0)) ? T(1) : T(0); }
};

template <>
struct Activation<Act::LeakyRelu> {
  template <typename T> C10_HOST_DEVICE static T f(T z) { return z > T(0) ? z : T(kLeakySlope) * z; }
  // Like torch's leaky_relu_backward: the slope-1 branch is z > 0 (NaN takes the other one).
  template <typename T> C10_HOST_DEVICE static bool mask_bit(T z) { return z > T(0); }
  template <typename T> C10_HOST_DEVICE static T df_sign(bool positive) { return positive ? T(1) : T(kLeakySlope); }
  // a > 0 exactly when z > 0, so the value carries the sign.
  template <typename T> C10_HOST_DEVICE static T df_value(T a) { return a > T(0) ? T(1) : T(kLeakySlope); }
};

template <>
struct Activation<Act::Tanh> {
  template <typename T> C10_HOST_DEVICE static T f(T z) { return ::tanh(z); }
  template <typename T> C10_HOST_DEVICE static bool mask_bit(T) { return false; }  // unused: tanh keeps values
  template <typename T> C10_HOST_DEVICE static T df_sign(bool) { return T(0); }
  template <typename T> C10_HOST_DEVICE static T df_value(T a) { return T(1) - a * a; }
};

template <>
struct Activation<Act::Sigmoid> {
  template <typename T> C10_HOST_DEVICE static T f(T z) { return T(1) / (T(1) + ::exp(-z)); }
  template <typename T> C10_HOST_DEVICE static bool mask_bit(T) { return false; }  // unused: sigmoid keeps values
  template <typename T> C10_HOST_DEVICE static T df_sign(bool) { return T(0); }
  template <typename T> C10_HOST_DEVICE static T df_value(T a) { return a * (T(1) - a); }
};

// Calls fn(std::integral_constant<Act, A>{}) so the activation is a compile-time constant inside fn.
template <typename Fn>
decltype(auto) dispatch_activation(Act act, Fn&& fn) {
  switch (act) {
    case Act::Identity: return fn(std::integral_constant<Act, Act::Identity>{});
    case Act::Relu: return fn(std::integral_constant<Act, Act::Relu>{});
    case Act::LeakyRelu: return fn(std::integral_constant<Act, Act::LeakyRelu>{});
    case Act::Tanh: return fn(std::integral_constant<Act, Act::Tanh>{});
    case Act::Sigmoid: return fn(std::integral_constant<Act, Act::Sigmoid>{});
  }
  TORCH_CHECK(false, "contres: internal error: activation code ", static_cast<int64_t>(act));
}

// Calls fn(std::integral_constant<Aux, K>{}) for the aux kinds the passes read and write (not Pre: "tv" has its
// own passes).
template <typename Fn>
decltype(auto) dispatch_aux(Aux aux, Fn&& fn) {
  switch (aux) {
    case Aux::None: return fn(std::integral_constant<Aux, Aux::None>{});
    case Aux::Mask: return fn(std::integral_constant<Aux, Aux::Mask>{});
    case Aux::Value: return fn(std::integral_constant<Aux, Aux::Value>{});
    case Aux::Pre: break;
  }
  TORCH_CHECK(false, "contres: internal error: no elementwise pass for aux kind ", static_cast<int64_t>(aux));
}

// Calls fn(act_tag, aux_tag), both compile-time constants, for a pair that Reachable (config.h) allows, else raises
// an internal error: the device passes instantiate only the pairs the table can produce.
template <bool (*Reachable)(Act, Aux), typename Fn>
void dispatch_reachable(Act act, Aux aux, const Fn& fn) {
  dispatch_activation(act, [&](auto a) {
    constexpr Act A = decltype(a)::value;
    dispatch_aux(aux, [&](auto k) {
      constexpr Aux K = decltype(k)::value;
      if constexpr (Reachable(A, K)) fn(a, k);
      else TORCH_CHECK(false, "contres: internal error: no fused pass for ", name_of(A), " with aux ", name_of(K));
    });
  });
}

}  // namespace contres
