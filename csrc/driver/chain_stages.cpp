// A chain's evaluation and its adjoint (docs/math.md section 8): each conv and conv_t one convolution call, each
// run of elementwise stages one pass in each direction (kernels.h's run passes; a grouped norm adds a sweep), the
// method's combination in the last run's pass. The backward of run i - 1 sits between conv i's data gradient and
// its weight gradient, so that the same pass that forms dL/dz_{i-1} also recomputes the conv's input y_{i-1} from
// the kept z_{i-1} (nothing of y is kept unless its run keeps its Value).
#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include <optional>
#include <vector>

#include "../kernels.h"
#include "stages.h"

namespace contres {
namespace {

void run(const RunForwardPass& pass, bool aten) {
  RECORD_FUNCTION("contres::run_forward_pass", std::vector<c10::IValue>());
  if (aten || !pass.in.is_cpu()) return run_forward_pass_aten(pass);
  run_forward_pass_cpu(pass);
}

void run(const RunGatePass& pass, bool aten) {
  RECORD_FUNCTION("contres::run_gate_pass", std::vector<c10::IValue>());
  if (aten || !pass.g.is_cpu()) return run_gate_pass_aten(pass);
  run_gate_pass_cpu(pass);
}

// A kernel without its time channel (input channel 0), the part a conv applies to the state's channels.
at::Tensor without_time(const at::Tensor& K, bool time) { return time ? K.narrow(1, 1, K.size(1) - 1) : K; }

}  // namespace

const at::Tensor& Stages::run_buffer(std::vector<at::Tensor>& buffers, int64_t run) {
  if (buffers.size() < p_.plan.runs.size()) buffers.resize(p_.plan.runs.size());
  at::Tensor& t = buffers[run];
  if (!t.defined()) {
    const int64_t width = p_.plan.runs[run].width.expect_int();
    t = at::empty({p_.B, width, p_.H, p_.W}, p_.conv_opts.memory_format(kLayout));
  }
  return t;
}

at::Tensor Stages::chain_conv(const ConvSpec& conv, const at::Tensor& y, const std::vector<at::Tensor>& prm) const {
  const at::Tensor K = without_time(prm[conv.kernel], p_.plan.convs[conv.source].time);
  return conv.transposed ? conv_transpose(y, K) : this->conv(y, K, prm[conv.bias]);
}

// t times conv i's time kernel applied to an image of ones (zero-padded like the state): (H, W, out) in the
// opmath type, what the time channel adds to the conv's output.
at::Tensor Stages::time_map(int64_t conv, const std::vector<at::Tensor>& prm, double t) const {
  const ConvSpec& c = p_.plan.convs[conv];
  if (!c.time || c.transposed) return at::Tensor();
  const at::Tensor Kt = prm[c.kernel].narrow(1, 0, 1);
  const at::Tensor ones = at::ones({1, 1, p_.H, p_.W}, Kt.options());
  const at::ScalarType opmath = p_.opts.dtype().toScalarType() == at::kDouble ? at::kDouble : at::kFloat;
  return (at::conv2d(ones, Kt, {}, {1, 1}, {p_.pad, p_.pad})[0].permute({1, 2, 0}).to(opmath) * t).contiguous();
}

// Where each grouped norm of the run puts (or finds) its statistics: the kept slot, else scratch.
std::vector<at::Tensor> Stages::run_stats(const RunSpec& run, const Kept& kept) {
  std::vector<at::Tensor> stats(run.steps.size());
  const at::ScalarType dtype = p_.opts.dtype().toScalarType() == at::kDouble ? at::kDouble : at::kFloat;
  for (size_t s = 0; s < run.steps.size(); ++s) {
    const RunStep& step = run.steps[s];
    if (!step.grouped()) continue;
    stats[s] = kept[step.stats];
    if (!stats[s].defined()) stats[s] = at::empty({p_.B, step.groups, 2}, p_.opts.dtype(dtype));
  }
  return stats;
}

void Stages::chain_forward(const at::Tensor& U, const std::vector<at::Tensor>& prm, double t, const Combination& comb,
                           const Kept& kept) {
  const Plan& plan = p_.plan;
  at::Tensor y = U;  // the next convolution's input
  if (!plan.runs[0].empty()) {
    RunForwardPass pass;
    pass.run = &plan.runs[0], pass.batch = p_.B, pass.in = U, pass.params = prm;
    pass.stats = run_stats(plan.runs[0], kept);
    pass.out = run_buffer(run_out_, 0);
    run(pass, p_.aten_runs);
    y = pass.out;
  }
  for (size_t i = 0; i < plan.convs.size(); ++i) {
    const RunSpec& r = plan.runs[i + 1];
    const bool last = i + 1 == plan.convs.size();
    const at::Tensor z = chain_conv(plan.convs[i], y, prm);
    const at::Tensor tmap = time_map(static_cast<int64_t>(i), prm, t);
    const at::Tensor keep = kept[r.slot];
    if (!last && r.empty() && !tmap.defined() && !keep.defined()) {  // nothing between two convolutions
      y = z;
      continue;
    }
    RunForwardPass pass;
    pass.run = &r, pass.batch = p_.B, pass.in = z, pass.time_map = tmap, pass.params = prm;
    pass.stats = run_stats(r, kept);
    if (last) {
      pass.comb = comb, pass.keep = keep;
    } else if (r.keep == Aux::Value && keep.defined()) {
      pass.out = keep;  // the kept output is the next convolution's input
    } else {
      pass.out = run_buffer(run_out_, static_cast<int64_t>(i) + 1), pass.keep = keep;
    }
    run(pass, p_.aten_runs);
    y = pass.out;
  }
}

at::Tensor Stages::chain_adjoint(const Upstream& up, const at::Tensor& U, const std::vector<at::Tensor>& prm, double t,
                                 const Kept& kept, const Grads::Slot& slot) {
  const Plan& plan = p_.plan;
  std::vector<bool> written(plan.params.size(), false);  // this evaluation's gradient of each parameter so far
  auto put = [&](int64_t param, const at::Tensor& value) {
    write_grad(slot.d[param], value, slot.accumulate || written[param]);
    written[param] = true;
  };
  // Gradients a pass reduces are written into temporaries, then put.
  auto grad_targets = [&](const RunSpec& r, RunGatePass& pass) {
    pass.param_grads.assign(plan.params.size(), at::Tensor());
    for (const RunStep& step : r.steps) {
      if (step.param < 0) continue;
      pass.param_grads[step.param] = at::empty_like(slot.d[step.param]);
      if (step.kind == Stage::Norm) pass.param_grads[step.param + 1] = at::empty_like(slot.d[step.param + 1]);
    }
    if (r.conv >= 0 && plan.convs[r.conv].bias >= 0) pass.conv_bias_grad = at::empty_like(slot.d[plan.convs[r.conv].bias]);
  };
  auto put_pass_grads = [&](const RunSpec& r, const RunGatePass& pass) {
    for (size_t i = 0; i < pass.param_grads.size(); ++i)
      if (pass.param_grads[i].defined()) put(static_cast<int64_t>(i), pass.param_grads[i]);
    if (pass.conv_bias_grad.defined()) put(plan.convs[r.conv].bias, pass.conv_bias_grad);
  };
  const int64_t m = static_cast<int64_t>(plan.convs.size());

  // The last run, from the method's upstream: g = dL/dz_m.
  at::Tensor g;
  {
    const RunSpec& r = plan.runs[m];
    RunGatePass pass;
    pass.run = &r, pass.batch = p_.B, pass.params = prm, pass.stats = run_stats(r, kept);
    pass.time_map = time_map(m - 1, prm, t);
    if (r.keep == Aux::Pre) pass.in = kept[r.slot];
    else if (r.keep != Aux::None) pass.kept = kept[r.slot];
    pass.lam = up.lam, pass.mu = up.mu, pass.c_mu = up.c_mu, pass.scale = up.scale, pass.sum_in = up.sum_in;
    pass.sum_out = up.sum_out;
    pass.g = run_buffer(run_grad_, m);
    grad_targets(r, pass);
    run(pass, p_.aten_runs);
    put_pass_grads(r, pass);
    g = pass.g;
  }
  at::Tensor mu;
  for (int64_t i = m; i >= 1; --i) {
    const ConvSpec& conv = plan.convs[i - 1];
    const RunSpec& prev = plan.runs[i - 1];
    const at::Tensor K = without_time(prm[conv.kernel], plan.convs[conv.source].time);
    // The data gradient: the adjoint of conv (a transposed convolution) or of conv_t (a convolution).
    const at::Tensor dy = conv.transposed ? this->conv(g, K, at::Tensor()) : conv_transpose(g, K);
    // The conv's input y_{i-1}: the state (run 0 empty), its kept Value, or recomputed by the pass below.
    at::Tensor y, g_prev;
    if (i == 1 && prev.empty()) {
      y = U, g_prev = dy;
    } else {
      RunGatePass pass;
      pass.run = &prev, pass.batch = p_.B, pass.params = prm, pass.stats = run_stats(prev, kept);
      pass.time_map = i >= 2 ? time_map(i - 2, prm, t) : at::Tensor();
      pass.dy = dy;
      if (i == 1) {
        pass.in = U, pass.out = run_buffer(run_out_, 0);
      } else if (prev.keep == Aux::Pre) {
        pass.in = kept[prev.slot], pass.out = run_buffer(run_out_, i - 1);
      } else {  // a run a convolution reads keeps its output unless it keeps its input (config.h)
        TORCH_CHECK(prev.keep == Aux::Value, "contres: internal error: run ", i - 1, " keeps ", name_of(prev.keep));
        pass.kept = kept[prev.slot];
        y = pass.kept;
      }
      // The state's gradient is mu, which the method keeps: a tensor of its own.
      pass.g = i == 1 ? empty_conv_state(p_) : run_buffer(run_grad_, i - 1);
      grad_targets(prev, pass);
      run(pass, p_.aten_runs);
      put_pass_grads(prev, pass);
      if (pass.out.defined()) y = pass.out;
      g_prev = pass.g;
    }
    // The weight gradient, into the full kernel (its time slice from the time channel's own gradient).
    const at::Tensor& Kfull = prm[conv.kernel];
    at::Tensor dK;
    // convT(y, K) as a function of K: the weight gradient of conv(g, K) under y
    dK = conv.transposed ? conv_weight_grad(y, g, K) : conv_weight_grad(g, y, K);
    if (Kfull.size(1) != K.size(1)) {
      at::Tensor full = at::zeros_like(Kfull, at::MemoryFormat::Contiguous);
      full.narrow(1, 1, K.size(1)).copy_(dK);
      if (!conv.transposed) {  // t * the weight gradient of conv(ones, K_t) under sum_b g
        const at::Tensor Kt = Kfull.narrow(1, 0, 1);
        const at::Tensor ones = at::ones({1, 1, p_.H, p_.W}, Kt.options());
        const at::Tensor G = g.sum(0, true).contiguous(kLayout);
        const at::Tensor dKt = std::get<1>(at::convolution_backward(G, ones, Kt, std::nullopt, {1, 1},
                                                                    {p_.pad, p_.pad}, {1, 1}, false, {0, 0}, 1,
                                                                    {false, true, false}));
        full.narrow(1, 0, 1).copy_(dKt.mul(t));
      }
      dK = full;
    }
    put(conv.kernel, dK);
    g = g_prev;
  }
  mu = g;
  return mu;
}

}  // namespace contres
