// Everything an ODE block is configured by, by name, and the one table of what each configuration keeps for
// its backward. Parsing, buffer shapes (saved.h), input checks and the instantiated kernels all derive from here;
// docs/math.md gives the maths behind each entry.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace contres {

enum class Method : int64_t { Euler, Rk4, Leapfrog };
// The layer: one of the two presets, or any other chain of stages (docs/math.md section 8). A preset is a chain too
// (single: conv, act; double_sym: conv, act, conv_t, neg; a norm stage after the conv when norm is not "none"),
// and a chain equal to a preset's runs on the presets' own passes (chain.h says when).
enum class Layer : int64_t { Single, DoubleSym, Chain };
enum class Act : int64_t { Identity, Relu, LeakyRelu, Tanh, Sigmoid, Softplus };
enum class Norm : int64_t { None, Tv, Group, Instance };
// The stages of a chain, applied in order to the state: a k x k convolution (its own kernel and bias per
// control), the transposed convolution with the kernel of the nearest conv before it, a learned per-channel bias,
// the norm, the activation, a negation.
enum class Stage : int64_t { Conv, ConvT, Bias, Norm, Act, Neg };
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
  Stats,  // a group or instance norm's mean and 1 / std per sample and group (chains)
};

// Each enum's names, in enum order: parse<E>() accepts exactly these, and nothing maps an unknown one to a known one.
template <typename E> struct Names;
template <> struct Names<Method> {
  static constexpr const char* what = "method";
  static constexpr std::array<const char*, 3> all = {"euler", "rk4", "leapfrog"};
};
template <> struct Names<Layer> {
  static constexpr const char* what = "layer";
  static constexpr std::array<const char*, 3> all = {"single", "double_sym", "chain"};
};
template <> struct Names<Act> {
  static constexpr const char* what = "activation";
  static constexpr std::array<const char*, 6> all = {"identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus"};
};
template <> struct Names<Norm> {
  static constexpr const char* what = "norm";
  static constexpr std::array<const char*, 4> all = {"none", "tv", "group", "instance"};
};
template <> struct Names<Stage> {
  static constexpr const char* what = "stage";
  static constexpr std::array<const char*, 6> all = {"conv", "conv_t", "bias", "norm", "act", "neg"};
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
  static constexpr std::array<const char*, 5> all = {"none", "mask", "value", "pre", "stats"};
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

// What the backward needs of one run of elementwise stages (the stages between two convolutions, or after the
// last one), from its shape: whether a norm, several activations, or an activation whose derivative needs its
// input (softplus) is in it, whether a bias or negation follows its activation, and whether a convolution reads
// its output (that convolution's weight gradient needs the output itself).
struct RunShape {
  bool norm = false;          // a norm stage (its backward recomputes from the run's input)
  int acts = 0;               // activation stages
  Act act = Act::Identity;    // the activation, when there is one
  bool after_act = false;     // a bias or neg stage after the activation
  bool read_by_conv = false;  // a conv or conv_t reads the run's output
};

// The one rule of what a run keeps: nothing when its backward is linear and no convolution reads its output; the
// output itself (Value) when it is a single activation, possibly after biases and negations, whose derivative is a
// function of its value, or when a convolution reads it; relu's and leaky_relu's sign bits (Mask) when no
// convolution reads it; otherwise its input (Pre), from which the backward recomputes everything. The presets'
// entries follow from it (aux_of).
constexpr Aux keep_of(RunShape r) {
  if (r.norm || r.acts > 1 || r.act == Act::Softplus || (r.acts == 1 && r.after_act)) return Aux::Pre;
  if (r.read_by_conv) return Aux::Value;
  if (r.acts == 0 || r.act == Act::Identity) return Aux::None;
  if (r.act == Act::Relu || r.act == Act::LeakyRelu) return Aux::Mask;
  return Aux::Value;
}

// What one evaluation of a preset keeps: its one run after the convolution, act (norm, act with a norm), read by
// double_sym's conv_t.
constexpr Aux aux_of(Layer layer, Act act, Norm norm) {
  return keep_of({norm != Norm::None, 1, act, false, layer == Layer::DoubleSym});
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
// Softplus runs on the chains' passes only (its derivative needs z).
constexpr bool forward_pass_reachable(Act act, Aux aux) {
  return act != Act::Softplus && (aux == Aux::None ? true : aux == aux_of(Layer::Single, act, Norm::None));
}
constexpr bool gate_pass_reachable(Act act, Aux aux) {
  return act != Act::Softplus && (aux == aux_of(Layer::Single, act, Norm::None) || aux == Aux::Value);
}

// The norm stage's options (docs/math.md section 8): eps of the normalisation; groups of "group" (0: min(32, the
// stage's width); "instance" is one group per channel); affine: a learned per-channel scale and shift after it.
struct NormOptions {
  double eps = 0;
  int64_t groups = 0;
  bool affine = false;
};

// The default eps of each norm: "tv" 1e-3 (as before chains), "group" and "instance" 1e-5 (torch's).
constexpr double default_norm_eps(Norm norm) { return norm == Norm::Tv ? 1e-3 : 1e-5; }

// A whole configuration, parsed.
struct Config {
  Method method;
  Layer layer;                // Single or DoubleSym when `stages` is that preset's chain, else Chain
  std::vector<Stage> stages;  // the chain, presets expanded
  Act act;
  Norm norm;
  NormOptions norm_options;
  bool time_channel = false;  // every conv also reads t as its input channel 0
  Memory memory;       // States: as checkpoint says; Reversible: u_{N-1}, u_N; None: nothing (no backward follows)
  int64_t checkpoint;  // 0: keep everything; s > 0: keep every s-th state and recompute the rest
  Aux aux() const { return aux_of(layer, act, norm); }  // a preset's one entry (the chains': chain.h)
};

// layer: "single", "double_sym", or the stage names of a chain joined by commas ("conv,norm,act").
Config parse_config(c10::string_view method, c10::string_view layer, c10::string_view activation,
                    c10::string_view norm, c10::string_view memory, int64_t checkpoint,
                    NormOptions norm_options = {}, bool time_channel = false);

}  // namespace contres
