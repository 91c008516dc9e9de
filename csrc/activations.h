// Activation functors shared by the CPU and CUDA kernels: act(z), and act' either from the sign of z
// (relu, leaky_relu: one bit per element is enough) or from the value a = act(z) (tanh, sigmoid), which
// is what PyTorch's own backward formulas use, so the fused gradients round like autograd's.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

namespace contres {

enum class Act : int64_t { Identity = 0, Relu = 1, LeakyRelu = 2, Tanh = 3, Sigmoid = 4 };
enum class Layer : int64_t { Single = 0, DoubleSym = 1 };

// What the forward keeps per step so the backward can form act'(z_k).
enum class Aux : int64_t {
  None = 0,   // identity: act' = 1
  Mask = 1,   // relu/leaky_relu of the single layer: bit-packed sign of z, ceil(H*W/8) bytes per plane
  Value = 2,  // a = act(z) in the state dtype (tanh/sigmoid; every activation of double_sym, whose
              // weight gradient needs a anyway)
  Pre = 3,    // z itself (norm "tv": the backward recomputes the normalisation, act and act' from it)
};

constexpr double kTvEps = 1e-3;  // the "tv" normalisation z / sqrt(sum_c z^2 + kTvEps); reference.TV_EPS

constexpr double kLeakySlope = 0.01;

Act parse_activation(const std::string& name);
Layer parse_layer(const std::string& name);
bool parse_norm(const std::string& name);  // "none" or "tv": is it "tv"?
Aux aux_kind(Layer layer, Act act, bool tv);

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
    default: return fn(std::integral_constant<Act, Act::Sigmoid>{});
  }
}

}  // namespace contres
