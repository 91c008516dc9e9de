// The op entry points: input checks, what is kept (saved.h), the tapes each sweep reads and writes, checkpointed
// segments and the reversible walk back, and the Meta kernels that torch.compile and torch.export trace.
#include "../ode_block.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <array>
#include <cmath>
#include <vector>

#include "../paths.h"
#include "../saved.h"
#include "entry.h"
#include "methods.h"

namespace contres {
namespace {

// The ops' numerics are a function of their inputs alone: torch.autocast, when on, must not recast the
// convolutions inside them (the caller chooses the dtypes, see contres.functional).
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

Dims check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double h, const Config& cfg,
                  Interp interp, int64_t n_steps) {
  TORCH_CHECK_VALUE(x.dim() == 4, "contres: x must be 4-D (B, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(weight.dim() == 5, "contres: weight must be 5-D (rows, C, C, k, k), got ", weight.dim(), "-D");
  TORCH_CHECK_VALUE(bias.dim() == 2, "contres: bias must be 2-D (rows, C), got ", bias.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "contres: x must be a floating tensor, got ",
                   c10::toString(x.scalar_type()));
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type() && bias.scalar_type() == x.scalar_type(),
                   "contres: weight and bias must have x's dtype ", c10::toString(x.scalar_type()), ", got ",
                   c10::toString(weight.scalar_type()), " and ", c10::toString(bias.scalar_type()));
  TORCH_CHECK(weight.device() == x.device() && bias.device() == x.device(),
              "contres: weight and bias must be on x's device ", x.device().str(), ", got ", weight.device().str(),
              " and ", bias.device().str());
  Dims d;
  d.B = x.sym_size(0), d.C = x.sym_size(1), d.H = x.sym_size(2), d.W = x.sym_size(3);
  const int64_t rows = weight.sym_size(0).guard_int(__FILE__, __LINE__);
  if (interp != Interp::None) {  // weight holds the controls, interpolated to the stage times of n_steps steps
    TORCH_CHECK_VALUE(n_steps >= 1, "contres: interp='", name_of(interp), "' interpolates the controls in weight to "
                      "the stage times of n_steps steps; n_steps must be >= 1, got ", n_steps);
    TORCH_CHECK_VALUE(rows >= 1, "contres: weight must hold at least one control, got weight.size(0) = 0");
    TORCH_CHECK_VALUE(n_steps <= Interpolation::kMaxSteps && rows <= Interpolation::kMaxSteps, "contres: n_steps and "
                      "the number of controls (weight.size(0)) must be at most ", Interpolation::kMaxSteps, ", got ",
                      n_steps, " and ", rows);
    d.n_steps = n_steps;
  } else if (cfg.method == Method::Rk4) {
    TORCH_CHECK_VALUE(rows >= 3 && rows % 2 == 1, "contres: method='rk4' takes the kernels at the 2N + 1 half steps "
                      "t = jT/(2N), an odd count >= 3; got weight.size(0) = ", rows);
    d.n_steps = (rows - 1) / 2;
  } else {
    TORCH_CHECK_VALUE(rows >= 1, "contres: weight must hold at least one step, got n_steps = ", rows);
    d.n_steps = rows;
  }
  TORCH_CHECK_VALUE(interp != Interp::None || n_steps == 0 || n_steps == d.n_steps, "contres: n_steps = ", n_steps,
                    " disagrees with the ", rows, " rows of kernels at the stage times in weight (interp='none', "
                    "where n_steps = 0 means: from weight)");
  d.k = weight.sym_size(3);
  TORCH_CHECK_VALUE(weight.sym_size(4) == d.k && d.k % 2 == 1, "contres: weight must be (rows, C, C, k, k) with "
                    "C = ", describe(d.C), " and odd k, got ", describe(weight.sym_sizes()));
  TORCH_CHECK_VALUE(std::isfinite(h) && h > 0, "contres: h must be a positive finite step, got ", h);
  return d;
}

// Every parameter against the plan: (rows, its shape), x's dtype and device. The kernel's message names its
// widths; a preset's is "(rows, C, C, k, k)".
void check_params(const std::vector<at::Tensor>& all, const Config& cfg, const Plan& plan, const Dims& d,
                  const at::Tensor& x) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(all.size()) == plan.n_params(), "contres: the chain '",
                    describe_stages(cfg.stages), "' takes ", plan.n_params() - 2, " parameters in params besides "
                    "weight and bias, got ", static_cast<int64_t>(all.size()) - 2);
  const c10::SymInt rows = all[0].sym_size(0);
  for (int64_t i = 0; i < plan.n_params(); ++i) {
    const ParamSpec& spec = plan.params[i];
    const at::Tensor& t = all[i];
    const std::string name = i < 2 ? spec.name : "params[" + std::to_string(i - 2) + "] (" + spec.name + ")";
    std::vector<c10::SymInt> want{rows};
    want.insert(want.end(), spec.shape.begin(), spec.shape.end());
    bool same = t.dim() == static_cast<int64_t>(want.size());
    for (int64_t j = 0; same && j < t.dim(); ++j) same = t.sym_size(j) == want[j];
    if (spec.kind == ParamKind::Kernel && spec.shape[0] == d.C && spec.shape[1] == d.C) {
      TORCH_CHECK_VALUE(same, "contres: ", name, " must be (rows, C, C, k, k) with C = ", describe(d.C),
                        " and odd k, got ", describe(t.sym_sizes()));
    } else {
      TORCH_CHECK_VALUE(same, "contres: ", name, " must be ", describe(c10::SymIntArrayRef(want)), " (stage ",
                        spec.stage, "), got ", describe(t.sym_sizes()));
    }
    TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "contres: ", name, " must have x's dtype ",
                     c10::toString(x.scalar_type()), ", got ", c10::toString(t.scalar_type()));
    TORCH_CHECK(t.device() == x.device(), "contres: ", name, " must be on x's device ", x.device().str(), ", got ",
                t.device().str());
  }
}

// The convolutions' dtype: x's, or (mixed precision, CPU) bfloat16 or float16 with float32 x.
Dtypes check_conv_dtype(const at::Tensor& x, std::optional<at::ScalarType> conv_dtype) {
  const at::ScalarType state = x.scalar_type(), conv = conv_dtype.value_or(state);
  const Dtypes dtypes{state, conv};
  TORCH_CHECK_TYPE(!dtypes.mixed() || (state == at::kFloat && (conv == at::kBFloat16 || conv == at::kHalf)),
                   "contres: conv_dtype must be x's dtype, or bfloat16 or float16 with float32 x (mixed "
                   "precision); got conv_dtype ", c10::toString(conv), " with x of dtype ", c10::toString(state));
  TORCH_CHECK_TYPE(!dtypes.mixed() || !x.is_cuda(), "contres: mixed precision (conv_dtype ", c10::toString(conv),
                   " with float32 x) runs on the CPU only; on CUDA pass x, weight and bias in one dtype");
  return dtypes;
}

Problem make_problem(const Call& call, const at::Tensor& x) {
  const Dims& d = call.dims;
  Problem p;
  p.fused_conv = call.fused_conv;
  p.cfg = call.cfg;
  p.h = call.h;
  p.n_steps = d.n_steps;
  p.B = d.B.expect_int(), p.C = d.C.expect_int(), p.H = d.H.expect_int(), p.W = d.W.expect_int();
  p.pad = d.k.expect_int() / 2;
  p.opts = x.options();
  p.conv_opts = x.options().dtype(call.dtypes.conv);
  p.plan = call.plan;
  p.aten_runs = run_passes() == RunPasses::Aten;
  p.own_conv = x.is_cpu() && own_conv_chosen();
  return p;
}

// The parameters at the stage times, those a convolution reads in its dtype (cast once per call in mixed
// precision).
Weights weights_of(const Problem& p, const Call& call, const std::vector<at::Tensor>& params) {
  std::vector<bool> conv_read;
  for (const ParamSpec& spec : p.plan.params)
    conv_read.push_back(spec.kind == ParamKind::Kernel || spec.kind == ParamKind::ConvBias);
  return Weights(params, conv_read, Interpolation(call.interp, p.cfg.method, p.n_steps, params[0].size(0)),
                 p.conv_dtype());
}

// The first evaluation's input: x_in in the convolution dtype and the internal layout (one pass in mixed
// precision), x (x_in in the internal layout) otherwise.
at::Tensor conv_input_of(const Problem& p, const at::Tensor& x_in, const at::Tensor& x) {
  if (!p.low_input()) return x;
  return x_in.to(x_in.options().dtype(p.conv_dtype()), false, false, kLayout);
}

// grad_out, states and aux against x, the arguments and the table: anything the forward did not make is refused.
void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& states,
                           const std::vector<at::Tensor>& aux, const Call& call) {
  const Config& cfg = call.cfg;
  const Dims& d = call.dims;
  TORCH_CHECK_VALUE(cfg.memory != Memory::None, "contres: a forward with memory='none' keeps nothing for a backward; "
                    "run it with memory='states' or 'reversible' to differentiate it");
  TORCH_CHECK_VALUE(grad_out.sym_sizes() == x.sym_sizes(), "contres: grad_out must have x's shape ",
                    describe(x.sym_sizes()), ", got ", describe(grad_out.sym_sizes()));
  TORCH_CHECK_TYPE(at::isFloatingType(grad_out.scalar_type()), "contres: grad_out must be a floating tensor, got ",
                   c10::toString(grad_out.scalar_type()));
  TORCH_CHECK(grad_out.device() == x.device(), "contres: grad_out must be on x's device ", x.device().str(), ", got ",
              grad_out.device().str());
  const SavedCounts n = saved_counts(cfg, call.plan, d.n_steps);
  const std::string states_what = "the forward's saved states for these arguments (" + std::to_string(n.states) +
                                  " states of x's shape, channels_last)";
  check_matches(states, states_spec(cfg, call.plan, d, call.dtypes), x.device(), "states", states_what.c_str());
  const std::vector<TensorSpec> specs = aux_specs(cfg, call.plan, d, call.dtypes);
  TORCH_CHECK_VALUE(aux.size() == specs.size(), "contres: aux must be the forward's saved aux for these arguments: ",
                    specs.size(), " tensors, got ", aux.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const SlotSpec& slot = call.plan.slots[i];
    const std::string name = specs.size() == 1 ? "aux" : "aux[" + std::to_string(i) + "]";
    const std::string what = "the forward's saved aux for these arguments (" + std::to_string(n.aux) + " entries of " +
                             name_of(slot.kind) + ")";
    check_matches(aux[i], specs[i], x.device(), name.c_str(), what.c_str());
  }
}

// States not kept, in turn with u_N's own buffer: u_k lives in slot (N - k) % depth, slot 0 being `last`, so the
// last step writes u_N where it belongs. The passes read every element of a combination's inputs before writing it
// (kernels.h), so Euler writes u_{k+1} over u_k (one slot) and leapfrog u_{k+1} over u_{k-1} (two); rk4 forms its
// stage inputs from u_k while it sums u_{k+1}, and a fused cuDNN graph's convolution reads neighbours of what its
// epilogue writes: two slots for those. Mixed precision: u_k's convolution input, written by the pass that writes
// u_k and read by the evaluations at u_k alone, in two slots of its own (last: undefined where no u_N is written).
// t, allocated on first use: a state-sized buffer in the state dtype, or the evaluations' input dtype when input.
const at::Tensor& lazy_buffer(at::Tensor& t, const Problem& p, bool input) {
  if (!t.defined()) t = input ? empty_input(p) : empty_state(p);
  return t;
}

class Scratch {
 public:
  Scratch(const Problem& p, const at::Tensor& last)
      : p_(p), depth_(p.cfg.method == Method::Euler && !p.fused_conv ? 1 : 2) {
    states_[0] = last;
  }
  at::Tensor state(int64_t k) { return lazy_buffer(states_[(p_.n_steps - k) % depth_], p_, false); }
  at::Tensor input(int64_t k) { return lazy_buffer(inputs_[k % 2], p_, true); }

 private:
  const Problem& p_;
  int64_t depth_;
  std::array<at::Tensor, 2> states_, inputs_;
};

// Where checkpoint stride s keeps u_k, or -1. Leapfrog with s > 1 also keeps the state before each point.
int64_t checkpoint_slot(const Config& cfg, int64_t n_steps, int64_t k) {
  const int64_t s = cfg.checkpoint, points = (n_steps - 1) / s;
  const bool pairs = cfg.method == Method::Leapfrog && s > 1;
  if (k > 0 && k % s == 0 && k / s <= points) return pairs ? 2 * (k / s - 1) + 1 : k / s - 1;
  if (pairs && (k + 1) % s == 0 && (k + 1) / s <= points) return 2 * ((k + 1) / s - 1);
  return -1;
}

// The saved tape of a full-storage forward (checkpoint 0): u_0 = x, then the stack.
int64_t full_state_slot(Method method, int64_t k) { return method == Method::Rk4 ? 4 * k - 1 : k - 1; }

// The adjoint's tape of a full-storage forward: what the convolutions read (x_in: the first one's input).
Tape saved_tape(const Problem& p, const at::Tensor& x_in, const at::Tensor& states, const std::vector<at::Tensor>& aux) {
  const int64_t S = stages_per_step(p.cfg.method);
  const Method m = p.cfg.method;
  Tape t;
  t.state = [=](int64_t k) { return k == 0 ? x_in : states[full_state_slot(m, k)]; };
  t.stage = [=](int64_t k, int s) { return states[4 * k + s - 1]; };
  t.aux = [=](int64_t k, int s) { return kept_entry(aux, k * S + s); };
  return t;
}

void sweep(const Problem& p, Stages& st, const Weights& w, const Tape& tape, int64_t begin, int64_t end,
           const at::Tensor& u_before) {
  switch (p.cfg.method) {
    case Method::Euler: return euler_sweep(p, st, w, tape, begin, end);
    case Method::Rk4: return rk4_sweep(p, st, w, tape, begin, end);
    case Method::Leapfrog: return leapfrog_sweep(p, st, w, tape, begin, end, u_before);
  }
  TORCH_CHECK(false, "contres: internal error: method code ", static_cast<int64_t>(p.cfg.method));
}

std::unique_ptr<Adjoint> make_adjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads,
                                      const at::Tensor& grad_out) {
  switch (p.cfg.method) {
    case Method::Euler: return make_euler_adjoint(p, st, w, grads, grad_out);
    case Method::Rk4: return make_rk4_adjoint(p, st, w, grads, grad_out);
    case Method::Leapfrog: return make_leapfrog_adjoint(p, st, w, grads, grad_out);
  }
  TORCH_CHECK(false, "contres: internal error: method code ", static_cast<int64_t>(p.cfg.method));
}

Dims dims_of(const Problem& p) {
  Dims d;
  d.B = p.B, d.C = p.C, d.H = p.H, d.W = p.W, d.k = 2 * p.pad + 1, d.n_steps = p.n_steps;
  return d;
}

Dtypes dtypes_of(const Problem& p) { return {p.opts.dtype().toScalarType(), p.conv_dtype()}; }

// Checkpointed backward: each segment [c, c + s) replayed from its kept state(s) with full storage, last first.
// Mixed precision with low-precision inputs: the kept states are running states (state dtype); the segment keeps
// its convolution inputs, the first cast from the kept state, and runs its own states in scratch.
void replay_segments(const Problem& p, Stages& st, const Weights& w, const at::Tensor& x, const at::Tensor& x_in,
                     const at::Tensor& states, Adjoint& adjoint) {
  const Config& cfg = p.cfg;
  const int64_t s = cfg.checkpoint, N = p.n_steps, S = stages_per_step(cfg.method);
  const int64_t len = std::min(s, N);  // a stride beyond n_steps is one segment
  const Dims d = dims_of(p);
  const at::TensorOptions input_opts = p.low_input() ? p.conv_opts : p.opts;
  const at::ScalarType input = input_opts.dtype().toScalarType();
  const at::Tensor seg_states = allocate(state_stack_spec(std::max<int64_t>(len - 1, 0), d, input), input_opts);
  const at::Tensor seg_stages =
      allocate(state_stack_spec(cfg.method == Method::Rk4 ? 3 * len : 0, d, input), input_opts);
  const std::vector<at::Tensor> seg_aux = allocate(aux_stack_specs(p.plan, S * len, d, dtypes_of(p)), p.opts);
  Scratch scratch(p, at::Tensor());
  at::Tensor first_input;  // low-precision inputs: the kept state of the segment being replayed, cast
  auto kept = [&](int64_t k) { return k == 0 ? x : states[checkpoint_slot(cfg, N, k)]; };
  for (int64_t c = ((N - 1) / s) * s; c >= 0; c -= s) {
    const int64_t end = std::min(c + s, N);
    Tape t;
    if (p.low_input()) {
      if (c == 0) {
        first_input = x_in;
      } else {
        st.to_conv(lazy_buffer(first_input, p, true), kept(c));  // c = 0, whose input is x_in, comes last
      }
      t.state = [&, c, end](int64_t k) {
        if (k == c) return kept(c);
        return k < end ? scratch.state(k) : at::Tensor();
      };
      t.input = [&, c, end](int64_t k) {
        if (k == c) return first_input;
        return k < end ? seg_states[k - c - 1] : at::Tensor();
      };
    } else {
      t.state = [&, c, end](int64_t k) {
        if (k == c) return kept(c);
        return k < end ? seg_states[k - c - 1] : at::Tensor();
      };
    }
    t.stage = [&, c](int64_t k, int i) { return seg_stages[3 * (k - c) + i - 1]; };
    t.aux = [&, c](int64_t k, int i) { return kept_entry(seg_aux, S * (k - c) + i); };
    const at::Tensor before = c == 0 ? x : (cfg.method == Method::Leapfrog && s > 1 ? kept(c - 1) : at::Tensor());
    sweep(p, st, w, t, c, end, before);
    adjoint.steps(t, c, end);
  }
}

// memory="reversible" (leapfrog): walks back from u_{N-1}, u_N, recomputing u_{k-1} = 2 u_k - u_{k+1} + h^2 f(u_k)
// with the evaluation the adjoint of step k needs anyway. Returns max|u_0 recomputed - x| / max|x|. Mixed
// precision: the walk runs on the float states; with low-precision inputs the pass that recomputes u_{k-1} also
// writes its convolution input.
at::Tensor reversible_walk(const Problem& p, Stages& st, const Weights& w, const at::Tensor& x, const at::Tensor& x_in,
                           const at::Tensor& states, Adjoint& adjoint) {
  const int64_t N = p.n_steps;
  const Dims d = dims_of(p);
  const Kept kept = kept_entry(allocate(aux_stack_specs(p.plan, 1, d, dtypes_of(p)), p.opts), 0);
  at::Tensor drift = at::zeros({}, p.opts);
  std::array<at::Tensor, 3> ring, ring_in;  // u_j (and its convolution input) in slot j % 3 once recomputed
  at::Tensor u_next = states[1], u = states[0], u_in = u;
  if (p.low_input()) {
    u_in = lazy_buffer(ring_in[(N - 1) % 3], p, true);
    st.to_conv(u_in, u);
  }
  const double h2 = p.h * p.h;
  for (int64_t k = N - 1; k >= 0; --k) {
    at::Tensor u_prev, u_prev_in;
    Combination comb;
    if (k >= 1) {
      u_prev = lazy_buffer(ring[(k - 1) % 3], p, false);
      u_prev_in = p.low_input() ? lazy_buffer(ring_in[(k - 1) % 3], p, true) : u_prev;
      comb.out = u_prev, comb.x0 = u, comb.c0 = 2, comb.x1 = u_next, comb.c1 = -1, comb.alpha = h2;
      if (p.low_input()) comb.out_low = u_prev_in;
    }
    const at::Tensor U = k == 0 ? x_in : u_in;  // the real input for the first step's gradients
    st.evaluate(U, w, k, comb, kept);
    Tape t;
    t.state = [&U](int64_t) { return U; };
    t.aux = [&kept](int64_t, int) { return kept; };
    adjoint.steps(t, k, k + 1);
    if (k == 1) drift = (u_prev - x).abs().max() / x.abs().max().clamp_min(1e-30);
    u_next = u;
    u = u_prev;
    u_in = u_prev_in;
  }
  return drift;
}

// What a CPU call runs: "cpu:own" when the own convolution serves its (float32) convolutions, else "cpu:aten".
std::string cpu_path_name(const at::Tensor& x, const Call& call) {
  return own_conv_chosen() && x.scalar_type() == at::kFloat && call.dtypes.conv == at::kFloat ? "cpu:own"
                                                                                                : "cpu:aten";
}

// weight, bias, then params: the plan's parameters in order.
std::vector<at::Tensor> all_params(const at::Tensor& weight, const at::Tensor& bias, at::TensorList params) {
  std::vector<at::Tensor> all{weight, bias};
  all.insert(all.end(), params.begin(), params.end());
  return all;
}

}  // namespace

ForwardResult forward_impl(const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
                           at::TensorList params, const Call& call) {
  const Config& cfg = call.cfg;
  const Dims& d = call.dims;
  const Problem p = make_problem(call, x_in);
  const at::Tensor x = x_in.contiguous(kLayout);
  const Weights w = weights_of(p, call, all_params(weight_in, bias_in, params));
  // The output keeps the input's layout; the last step writes into it directly when that is the internal one.
  const at::Tensor out = at::empty_like(x_in, at::MemoryFormat::Preserve);
  const at::Tensor last = out.is_contiguous(kLayout) ? out : empty_state(p);
  const at::Tensor states = allocate(states_spec(cfg, p.plan, d, call.dtypes), p.opts);
  const std::vector<at::Tensor> aux = allocate(aux_specs(cfg, p.plan, d, call.dtypes), p.opts);
  if (x.numel() == 0) return {out, states, aux};

  const int64_t N = p.n_steps, S = stages_per_step(cfg.method);
  const bool full = cfg.checkpoint == 0 && cfg.memory == Memory::States;
  Scratch scratch(p, last);
  std::array<at::Tensor, 2> stage_scratch;  // rk4's U4 takes U2's buffer: U2 is read before U4 is written
  Tape t;
  // Low-precision inputs (mixed precision): the running states are scratch (full storage keeps the convolution
  // inputs), and each state's pass also writes the next convolution's input.
  t.state = [&](int64_t k) -> at::Tensor {
    if (k == 0) return x;
    if (k == N) return last;
    if (full) return p.low_input() ? scratch.state(k) : states[full_state_slot(cfg.method, k)];
    if (cfg.memory == Memory::None) return scratch.state(k);
    if (cfg.memory == Memory::Reversible) return k == N - 1 ? states[0] : scratch.state(k);
    const int64_t slot = checkpoint_slot(cfg, N, k);
    return slot >= 0 ? states[slot] : scratch.state(k);
  };
  const at::Tensor x_input = conv_input_of(p, x_in, x);
  if (p.low_input()) {
    t.input = [&](int64_t k) -> at::Tensor {
      if (k == 0) return x_input;
      if (k == N) return at::Tensor();  // no convolution reads u_N
      return full ? states[full_state_slot(cfg.method, k)] : scratch.input(k);
    };
  }
  t.stage = [&](int64_t k, int s) -> at::Tensor {
    if (full) return states[4 * k + s - 1];
    return lazy_buffer(stage_scratch[(s - 1) % 2], p, true);
  };
  t.aux = [&](int64_t k, int s) { return kept_entry(aux, k * S + s); };
  Stages st(p);
  sweep(p, st, w, t, 0, N, x);
  if (cfg.memory == Memory::Reversible) {
    at::Tensor(states[1]).copy_(last);
    if (N == 1) at::Tensor(states[0]).copy_(x);
  }
  if (!last.is_same(out)) out.copy_(last);
  return {out, states, aux};
}

BackwardResult backward_impl(const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& weight_in,
                             const at::Tensor& bias_in, at::TensorList params, const at::Tensor& states,
                             const std::vector<at::Tensor>& aux, const Call& call) {
  const Config& cfg = call.cfg;
  const Problem p = make_problem(call, x_in);
  // x itself: the first evaluation's input (unless it is a low-precision copy), or where a replay or the
  // reversible walk starts.
  const bool need_x = !p.low_input() || cfg.checkpoint > 0 || cfg.memory == Memory::Reversible;
  const at::Tensor x = need_x ? x_in.contiguous(kLayout) : at::Tensor();
  const Weights w = weights_of(p, call, all_params(weight_in, bias_in, params));
  Grads grads(w);  // in the controls' (the state's) dtype: mixed precision sums the low-precision ones in float
  at::Tensor drift = at::zeros({}, p.opts);
  auto result = [&](const at::Tensor& grad_x) -> BackwardResult {
    std::vector<at::Tensor> g = grads.finish();
    const at::Tensor gw = g[0], gb = g[1];
    g.erase(g.begin(), g.begin() + 2);
    return {grad_x, gw, gb, drift, g};
  };
  if (x_in.numel() == 0) return result(at::zeros_like(x_in, at::MemoryFormat::Preserve));

  const at::Tensor lam = grad_out.to(x_in.scalar_type()).contiguous(kLayout);
  const at::Tensor x_input = conv_input_of(p, x_in, x);
  Stages st(p);
  const std::unique_ptr<Adjoint> adjoint = make_adjoint(p, st, w, grads, lam);
  if (cfg.memory == Memory::Reversible) {
    drift = reversible_walk(p, st, w, x, x_input, states, *adjoint);
  } else if (cfg.checkpoint == 0) {
    adjoint->steps(saved_tape(p, x_input, states, aux), 0, p.n_steps);
  } else {
    replay_segments(p, st, w, x, x_input, states, *adjoint);
  }
  const at::Tensor gx = adjoint->finish();
  if (gx.strides() == x_in.strides()) return result(gx);
  const at::Tensor grad_x = at::empty_like(x_in, at::MemoryFormat::Preserve);
  grad_x.copy_(gx);
  return result(grad_x);
}

Call check_call(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::TensorList params,
                double h, c10::string_view layer, c10::string_view activation, int64_t checkpoint,
                c10::string_view norm, c10::string_view method, c10::string_view memory, c10::string_view interp,
                int64_t n_steps, std::optional<at::ScalarType> conv_dtype, std::optional<double> norm_eps,
                int64_t norm_groups, bool norm_affine, bool time_channel) {
  Call call;
  NormOptions norm_options;
  norm_options.eps = norm_eps.value_or(0);
  TORCH_CHECK_VALUE(!norm_eps.has_value() || *norm_eps > 0, "contres: norm_eps must be > 0, got ", norm_eps.value_or(0));
  norm_options.groups = norm_groups;
  norm_options.affine = norm_affine;
  call.cfg = parse_config(method, layer, activation, norm, memory, checkpoint, norm_options, time_channel);
  call.interp = parse<Interp>(interp);
  call.dims = check_inputs(x, weight, bias, h, call.cfg, call.interp, n_steps);
  call.plan = make_plan(call.cfg, call.dims.C, weight.sym_size(1), call.dims.k.guard_int(__FILE__, __LINE__));
  check_params(all_params(weight, bias, params), call.cfg, call.plan, call.dims, x);
  call.dtypes = check_conv_dtype(x, conv_dtype);
  call.h = h;
  return call;
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> ode_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double h, c10::string_view layer,
    c10::string_view activation, int64_t checkpoint, c10::string_view norm, c10::string_view method,
    c10::string_view memory, c10::string_view interp, int64_t n_steps, std::optional<at::ScalarType> conv_dtype,
    std::optional<at::TensorList> params_or_none, std::optional<double> norm_eps, int64_t norm_groups,
    bool norm_affine, bool time_channel) {
  const at::TensorList params = params_or_none.value_or(at::TensorList());
  const c10::DeviceGuard device(x.device());  // x's GPU current for the passes and ATen's convolutions
  const NoAutocast no_autocast;
  const Call call = check_call(x, weight, bias, params, h, layer, activation, checkpoint, norm, method, memory, interp,
                               n_steps, conv_dtype, norm_eps, norm_groups, norm_affine, time_channel);
#ifdef CONTRES_WITH_CUDA
  if (x.is_cuda()) return cuda_forward(x, weight, bias, params, call);
#endif
  record_path(Direction::Forward, cpu_path_name(x, call));
  return forward_impl(x, weight, bias, params, call);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> ode_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& states, at::TensorList aux, double h, c10::string_view layer, c10::string_view activation,
    int64_t checkpoint, c10::string_view norm, c10::string_view method, c10::string_view memory,
    c10::string_view interp, int64_t n_steps, std::optional<at::ScalarType> conv_dtype,
    std::optional<at::TensorList> params_or_none,
    std::optional<double> norm_eps, int64_t norm_groups, bool norm_affine, bool time_channel) {
  const at::TensorList params = params_or_none.value_or(at::TensorList());
  const c10::DeviceGuard device(x.device());
  const NoAutocast no_autocast;
  const Call call = check_call(x, weight, bias, params, h, layer, activation, checkpoint, norm, method, memory, interp,
                               n_steps, conv_dtype, norm_eps, norm_groups, norm_affine, time_channel);
  const std::vector<at::Tensor> kept = aux.vec();
  check_backward_inputs(grad_out, x, states, kept, call);
#ifdef CONTRES_WITH_CUDA
  if (x.is_cuda()) return cuda_backward(grad_out, x, weight, bias, params, states, kept, call);
#endif
  record_path(Direction::Backward, cpu_path_name(x, call));
  return backward_impl(grad_out, x, weight, bias, params, states, kept, call);
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> ode_forward_meta(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double h, c10::string_view layer,
    c10::string_view activation, int64_t checkpoint, c10::string_view norm, c10::string_view method,
    c10::string_view memory, c10::string_view interp, int64_t n_steps, std::optional<at::ScalarType> conv_dtype,
    std::optional<at::TensorList> params_or_none, std::optional<double> norm_eps, int64_t norm_groups,
    bool norm_affine, bool time_channel) {
  const at::TensorList params = params_or_none.value_or(at::TensorList());
  const Call c = check_call(x, weight, bias, params, h, layer, activation, checkpoint, norm, method, memory, interp,
                            n_steps, conv_dtype, norm_eps, norm_groups, norm_affine, time_channel);
  return {at::empty_like(x, at::MemoryFormat::Preserve),
          allocate(states_spec(c.cfg, c.plan, c.dims, c.dtypes), x.options()),
          allocate(aux_specs(c.cfg, c.plan, c.dims, c.dtypes), x.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> ode_backward_meta(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& states, at::TensorList aux, double h, c10::string_view layer, c10::string_view activation,
    int64_t checkpoint, c10::string_view norm, c10::string_view method, c10::string_view memory,
    c10::string_view interp, int64_t n_steps, std::optional<at::ScalarType> conv_dtype,
    std::optional<at::TensorList> params_or_none,
    std::optional<double> norm_eps, int64_t norm_groups, bool norm_affine, bool time_channel) {
  const at::TensorList params = params_or_none.value_or(at::TensorList());
  const Call c = check_call(x, weight, bias, params, h, layer, activation, checkpoint, norm, method, memory, interp,
                            n_steps, conv_dtype, norm_eps, norm_groups, norm_affine, time_channel);
  check_backward_inputs(grad_out, x, states, aux.vec(), c);
  std::vector<at::Tensor> grads;
  for (const at::Tensor& t : params) grads.push_back(at::empty_like(t, at::MemoryFormat::Contiguous));
  return {at::empty_like(x, at::MemoryFormat::Preserve), at::empty_like(weight, at::MemoryFormat::Contiguous),
          at::empty_like(bias, at::MemoryFormat::Contiguous), at::empty({}, x.options()), grads};
}

}  // namespace contres
