// Everything an ODE block is configured by, by name, and the one table of what each configuration keeps for
// its backward. Parsing, buffer shapes (saved.h), input checks and the instantiated kernels all derive from here;
// docs/math.md gives the maths behind each entry.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <array>
#include <cstdint>
#include <string>

namespace contres {

enum class Method : int64_t { Euler, Rk4, Leapfrog };
enum class Layer : int64_t { Single, DoubleSym };
enum class Act : int64_t { Identity, Relu, LeakyRelu, Tanh, Sigmoid };
enum class Norm : int64_t { None, Tv };
enum class Memory : int64_t { States, Reversible, None };
// How the op's weight and bias become the kernels at the method's stage times (docs/math.md section 1): "none", they
// already are (one row per stage time); "constant" / "linear", they are the controls, interpolated inside the op.
enum class Interp : int64_t { None, Constant, Linear };

// What one evaluation of f keeps per element so that the backward can form act'(z).
enum class Aux : int64_t {
  None,   // identity: act' = 1
  Mask,   // relu, leaky_relu of the single layer: the sign of z, one bit per element
  Value,  // a = act(z) in the state dtype: tanh, sigmoid (PyTorch's own backward uses it), and every activation
          // of double_sym (its weight gradient needs a anyway)
  Pre,    // z itself: norm "tv" (the backward recomputes the normalisation, act and act' from it)
};

// Each enum's names, in enum order: parse<E>() accepts exactly these, and nothing maps an unknown one to a known one.
template <typename E> struct Names;
template <> struct Names<Method> {
  static constexpr const char* what = "method";
  static constexpr std::array<const char*, 3> all = {"euler", "rk4", "leapfrog"};
};
template <> struct Names<Layer> {
  static constexpr const char* what = "layer";
  static constexpr std::array<const char*, 2> all = {"single", "double_sym"};
};
template <> struct Names<Act> {
  static constexpr const char* what = "activation";
  static constexpr std::array<const char*, 5> all = {"identity", "relu", "leaky_relu", "tanh", "sigmoid"};
};
template <> struct Names<Norm> {
  static constexpr const char* what = "norm";
  static constexpr std::array<const char*, 2> all = {"none", "tv"};
};
template <> struct Names<Memory> {
  static constexpr const char* what = "memory";
  static constexpr std::array<const char*, 3> all = {"states", "reversible", "none"};
};
template <> struct Names<Interp> {
  static constexpr const char* what = "interp";
  static constexpr std::array<const char*, 3> all = {"none", "constant", "linear"};
};
template <> struct Names<Aux> {
  static constexpr const char* what = "aux";
  static constexpr std::array<const char*, 4> all = {"none", "mask", "value", "pre"};
};

template <typename E>
E parse(c10::string_view name) {
  const auto& all = Names<E>::all;
  for (size_t i = 0; i < all.size(); ++i)
    if (name == all[i]) return static_cast<E>(i);
  std::string choices;
  for (size_t i = 0; i < all.size(); ++i) choices += (i ? ", " : "") + std::string(all[i]);
  TORCH_CHECK_VALUE(false, "contres: ", Names<E>::what, " must be one of ", choices, "; got '", std::string(name), "'");
}

template <typename E>
const char* name_of(E value) {
  return Names<E>::all.at(static_cast<size_t>(value));
}

// ---------------------------------------------------------------------------------------------------- the table

// What one evaluation of f keeps (see Aux).
constexpr Aux aux_of(Layer layer, Act act, Norm norm) {
  if (norm == Norm::Tv) return Aux::Pre;
  if (layer == Layer::DoubleSym) return Aux::Value;
  if (act == Act::Relu || act == Act::LeakyRelu) return Aux::Mask;
  if (act == Act::Identity) return Aux::None;
  return Aux::Value;
}

// Evaluations of f per step: rk4's four stages, one otherwise.
constexpr int64_t stages_per_step(Method method) { return method == Method::Rk4 ? 4 : 1; }

// Rows of per-time kernels a method reads: the N step starts, or rk4's 2N + 1 half steps.
constexpr int64_t stage_times(Method method, int64_t n_steps) {
  return method == Method::Rk4 ? 2 * n_steps + 1 : n_steps;
}

// The elementwise passes (kernels.h) meet only these (activation, aux) pairs, so only these are instantiated:
// the forward pass writes the single layer's own aux or none (double_sym and the linear combinations run it as
// the identity without aux); the adjoint gate reads the single layer's aux, or the Value every double_sym keeps.
constexpr bool forward_pass_reachable(Act act, Aux aux) {
  return aux == Aux::None ? true : aux == aux_of(Layer::Single, act, Norm::None);
}
constexpr bool gate_pass_reachable(Act act, Aux aux) {
  return aux == aux_of(Layer::Single, act, Norm::None) || aux == Aux::Value;
}

// A whole configuration, parsed.
struct Config {
  Method method;
  Layer layer;
  Act act;
  Norm norm;
  Memory memory;       // States: as checkpoint says; Reversible: u_{N-1}, u_N; None: nothing (no backward follows)
  int64_t checkpoint;  // 0: keep everything; s > 0: keep every s-th state and recompute the rest
  Aux aux() const { return aux_of(layer, act, norm); }
};

Config parse_config(c10::string_view method, c10::string_view layer, c10::string_view activation,
                    c10::string_view norm, c10::string_view memory, int64_t checkpoint);

}  // namespace contres
