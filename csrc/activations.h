// Activation functors shared by the CPU and CUDA kernels: act(z), and act' either from the sign of z
// (relu, leaky_relu: one bit per element is enough) or from the value a = act(z) (tanh, sigmoid), which
// is what PyTorch's own backward formulas use, so the fused gradients round like autograd's.
#pragma once

#include <c10/macros/Macros.h>

#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "config.h"

namespace contres {

// The presets' "tv" normalisation z / sqrt(sum_c z^2 + kTvEps) (reference.TV_EPS); chains take norm_eps.
constexpr double kTvEps = default_norm_eps(Norm::Tv);

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

// torch's softplus with beta 1 and threshold 20: z above the threshold, log1p(exp(z)) below. Its derivative needs z
// (the chains keep z where it is used), as torch's softplus_backward: exp(z) / (exp(z) + 1), 1 above the threshold.
constexpr double kSoftplusThreshold = 20;

template <>
struct Activation<Act::Softplus> {
  template <typename T> C10_HOST_DEVICE static T f(T z) { return z > T(kSoftplusThreshold) ? z : ::log1p(::exp(z)); }
  template <typename T> C10_HOST_DEVICE static T df(T z) {
    const T e = ::exp(z);
    return z > T(kSoftplusThreshold) ? T(1) : e / (e + T(1));
  }
};

// Calls fn(std::integral_constant<Act, A>{}) so the activation is a compile-time constant inside fn: every
// activation (the chains' passes), or the presets' (their passes have no softplus).
template <bool kWithSoftplus = true, typename Fn>
decltype(auto) dispatch_activation(Act act, Fn&& fn) {
  switch (act) {
    case Act::Identity: return fn(std::integral_constant<Act, Act::Identity>{});
    case Act::Relu: return fn(std::integral_constant<Act, Act::Relu>{});
    case Act::LeakyRelu: return fn(std::integral_constant<Act, Act::LeakyRelu>{});
    case Act::Tanh: return fn(std::integral_constant<Act, Act::Tanh>{});
    case Act::Sigmoid: return fn(std::integral_constant<Act, Act::Sigmoid>{});
    case Act::Softplus:
      if constexpr (kWithSoftplus) return fn(std::integral_constant<Act, Act::Softplus>{});
      break;
  }
  TORCH_CHECK(false, "contres: internal error: no pass for activation code ", static_cast<int64_t>(act));
}
template <typename Fn>
decltype(auto) dispatch_layer_activation(Act act, Fn&& fn) {
  return dispatch_activation<false>(act, std::forward<Fn>(fn));
}

// Calls fn(std::integral_constant<Aux, K>{}) for the aux kinds the passes read and write (not Pre: "tv" has its
// own passes).
template <typename Fn>
decltype(auto) dispatch_aux(Aux aux, Fn&& fn) {
  switch (aux) {
    case Aux::None: return fn(std::integral_constant<Aux, Aux::None>{});
    case Aux::Mask: return fn(std::integral_constant<Aux, Aux::Mask>{});
    case Aux::Value: return fn(std::integral_constant<Aux, Aux::Value>{});
    case Aux::Pre:
    case Aux::Stats: break;
  }
  TORCH_CHECK(false, "contres: internal error: no elementwise pass for aux kind ", static_cast<int64_t>(aux));
}

// Calls fn(act_tag, aux_tag), both compile-time constants, for a pair that Reachable (config.h) allows, else raises
// an internal error: the device passes instantiate only the pairs the table can produce.
template <bool (*Reachable)(Act, Aux), typename Fn>
void dispatch_reachable(Act act, Aux aux, const Fn& fn) {
  dispatch_layer_activation(act, [&](auto a) {
    constexpr Act A = decltype(a)::value;
    dispatch_aux(aux, [&](auto k) {
      constexpr Aux K = decltype(k)::value;
      if constexpr (Reachable(A, K)) fn(a, k);
      else TORCH_CHECK(false, "contres: internal error: no fused pass for ", name_of(A), " with aux ", name_of(K));
    });
  });
}

}  // namespace contres
