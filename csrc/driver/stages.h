// The building blocks every integrator is made of: one evaluation of the layer's f (its convolutions on ATen or
// the fused cuDNN graphs, its elementwise work in one pass of kernels.h) with the linear combination the method
// makes of it, and the adjoint of one evaluation. Device-agnostic; docs/math.md has the formulas.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "../chain.h"
#include "../config.h"
#include "../kernels.h"  // Combination: what a forward evaluation writes
#include "controls.h"

namespace contres {

// One call of an op, checked and parsed.
struct Problem {
  Config cfg;
  Plan plan;  // the chain's program (chain.h); the presets' too
  double h = 0;
  int64_t n_steps = 0, B = 0, C = 0, H = 0, W = 0, pad = 0;
  at::TensorOptions opts;       // the state's dtype and device
  at::TensorOptions conv_opts;  // the convolutions' operands: weight's dtype (mixed precision: not the state's)
  bool fused_conv = false;  // CUDA: run each step's convolution with its elementwise work as fused cuDNN graphs
  bool aten_runs = false;   // the chains' run passes composed of ATen operations (kernels.h), not the CPU kernels
  bool own_conv = false;    // CPU: the own convolution (cpu/own_conv.h) where it serves, not ATen's
  bool mixed() const { return conv_opts.dtype() != opts.dtype(); }
  at::ScalarType conv_dtype() const { return conv_opts.dtype().toScalarType(); }
  // The evaluations' inputs (u_k, rk4's stage inputs) are the first convolution's own: in its dtype when mixed.
  bool low_input() const { return mixed() && plan.input_is_conv_input(); }
  // The time of stage-time row `row` (t_k = k h; rk4's rows are the half steps).
  double stage_time(int64_t row) const { return row * (cfg.method == Method::Rk4 ? h / 2 : h); }
};

// What one evaluation keeps for its backward: one tensor per kept slot of the plan (chain.h), each undefined
// when not wanted (a recomputation that needs none, or a forward that keeps nothing).
struct Kept {
  std::vector<at::Tensor> slots;
  bool any() const {
    for (const at::Tensor& t : slots)
      if (t.defined()) return true;
    return false;
  }
  at::Tensor operator[](int64_t i) const {
    return i >= 0 && i < static_cast<int64_t>(slots.size()) ? slots[i] : at::Tensor();
  }
};
// Entry e of each of a forward's aux tensors (none: nothing kept).
Kept kept_entry(const std::vector<at::Tensor>& aux, int64_t e);

// Every state-sized tensor inside the ops is channels_last; the x-shaped outputs (u_N, dL/dx) keep x's own
// layout. Measured per convolution at the benchmark shapes: cuDNN on an H100 is about twice as fast in
// channels_last; oneDNN on the CPU 10-30 % faster with AVX-512 and no slower with AVX2 alone, as in NCHW it
// reorders to its blocked layouts and back on every call.
constexpr at::MemoryFormat kLayout = at::MemoryFormat::ChannelsLast;

at::Tensor empty_state(const Problem& p);       // one state-sized tensor in the internal layout
at::Tensor empty_conv_state(const Problem& p);  // the same in the convolution dtype
at::Tensor empty_input(const Problem& p);       // the same in the evaluations' input dtype (Problem::low_input)

// The upstream of one evaluation's adjoint: dL/df = scale * (lam + c_mu * mu); the same pass also forms the
// methods' running sum sum_out = sum_in + mu (sum_in undefined: lam) when sum_out is defined.
struct Upstream {
  at::Tensor lam, mu;
  double c_mu = 1, scale = 1;
  at::Tensor sum_in, sum_out;
};

class Stages {
 public:
  explicit Stages(const Problem& p) : p_(p) {}

  // f evaluated at U (the evaluation's input, Problem::low_input's dtype) with the parameters of stage-time row
  // `row`, written as `comb` says, and what it keeps into `kept` where defined (a recomputation may ask for the
  // kept entries alone).
  void evaluate(const at::Tensor& U, const Weights& w, int64_t row, const Combination& comb, const Kept& kept);

  // The adjoint of that evaluation (kept: what it kept): returns mu = J_f(U)^T dL/df (in the convolution dtype;
  // undefined unless want_mu), and writes the row's parameter gradients into slot.d, or adds them when
  // slot.accumulate.
  at::Tensor adjoint(const Upstream& up, const at::Tensor& U, const Weights& w, int64_t row, const Kept& kept,
                     const Grads::Slot& slot, bool want_mu);

  // The presets' evaluation and adjoint on their own passes, with kernel K and bias b (aux: the one kept slot).
  void forward(const at::Tensor& U, const at::Tensor& K, const at::Tensor& b, const Combination& comb,
               const at::Tensor& aux_out);
  at::Tensor adjoint(const Upstream& up, const at::Tensor& U, const at::Tensor& K, const at::Tensor& aux,
                     const at::Tensor& dK, const at::Tensor& db, bool accumulate, bool want_mu);

  // out = scale * (lam + c_mu * mu) (mu may be undefined), and sum_out = sum_in + mu when defined: one pass
  // (the identity's gate).
  void combine(const at::Tensor& out, const at::Tensor& lam, const at::Tensor& mu, double c_mu, double scale = 1,
               const at::Tensor& sum_in = {}, const at::Tensor& sum_out = {});

  // Where the methods' adjoints form a running sum lam + mu (the next lam, in the state dtype): mu's own buffer
  // when it has the state dtype, else a state buffer of this Stages that nothing else holds any more.
  at::Tensor sum_target(const at::Tensor& mu);
  // lam + mu in the state dtype (dL/dx at the end of an adjoint); may reuse mu's buffer.
  at::Tensor add(const at::Tensor& lam, const at::Tensor& mu);
  // u in the convolution dtype, written into out (one pass; mixed precision).
  void to_conv(const at::Tensor& out, const at::Tensor& u) { combine(out, u, at::Tensor(), 1); }

  // Every convolution of the ops (same padding, stride 1), on ATen's or the own one (Problem::own_conv,
  // cpu/own_conv.h): conv(u, K) (+ b when defined); convT(g, K); dL/dK of conv(input, K) under upstream g; and
  // conv_backward, both gradients (dL/dinput when want_input).
  at::Tensor conv(const at::Tensor& u, const at::Tensor& K, const at::Tensor& b) const;
  at::Tensor conv_transpose(const at::Tensor& g, const at::Tensor& K) const;
  at::Tensor conv_weight_grad(const at::Tensor& g, const at::Tensor& input, const at::Tensor& K) const;
  std::tuple<at::Tensor, at::Tensor> conv_backward(const at::Tensor& g, const at::Tensor& input, const at::Tensor& K,
                                                   bool want_input) const;
  // g = scale * act'(aux) * (lam + c_mu mu) with the running sum; reduces the bias gradient into db.
  void gate(const Upstream& up, const at::Tensor& aux, const at::Tensor& z_for_tv, const at::Tensor& g,
            const at::Tensor& db, bool accumulate, const at::Tensor& a_out = {});

 private:
  bool own(const at::Tensor& x, const at::Tensor& K) const;  // the own convolution serves conv(x, K)
  void write_grad(const at::Tensor& target, const at::Tensor& value, bool accumulate) const;
  // A chain's evaluation and adjoint (driver/chain_stages.cpp).
  void chain_forward(const at::Tensor& U, const std::vector<at::Tensor>& prm, double t, const Combination& comb,
                     const Kept& kept);
  at::Tensor chain_adjoint(const Upstream& up, const at::Tensor& U, const std::vector<at::Tensor>& prm, double t,
                           const Kept& kept, const Grads::Slot& slot);
  at::Tensor chain_conv(const ConvSpec& conv, const at::Tensor& y, const std::vector<at::Tensor>& prm) const;
  at::Tensor time_map(int64_t conv, const std::vector<at::Tensor>& prm, double t) const;
  std::vector<at::Tensor> run_stats(const RunSpec& run, const Kept& kept);
  const at::Tensor& run_buffer(std::vector<at::Tensor>& buffers, int64_t run);

  const Problem& p_;
  at::Tensor g_buffer_, v_buffer_;  // reused across evaluations (convolution dtype)
  std::vector<at::Tensor> sum_buffers_;  // sum_target's state buffers (mixed precision)
  std::vector<at::Tensor> run_out_, run_grad_;  // a chain's per-run outputs and gradients (convolution dtype)
};

}  // namespace contres
