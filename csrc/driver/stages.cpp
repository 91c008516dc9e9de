#include "stages.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include <optional>
#include <vector>

#include "../cpu/own_conv.h"
#include "../kernels.h"
#ifdef CONTRES_WITH_CUDNN_FUSION
#include "../cuda/cudnn_euler.h"  // Euler's steps on the fused cuDNN graphs
#endif

namespace contres {
namespace {

// Each pass is a named range in torch.profiler's traces (what bench/profile_cpu.py sums); free when no profiler runs.
void run(const ForwardPass& pass) {
  RECORD_FUNCTION("contres::forward_pass", std::vector<c10::IValue>());
#ifdef CONTRES_WITH_CUDA
  if (pass.z.is_cuda()) return forward_pass_cuda(pass);
#endif
  TORCH_CHECK(pass.z.is_cpu(), "contres: no fused kernel for device ", pass.z.device().str(), " in this build");
  forward_pass_cpu(pass);
}

bool run(const GatePass& pass) {  // whether the pass reduced the bias gradient
  RECORD_FUNCTION("contres::gate_pass", std::vector<c10::IValue>());
#ifdef CONTRES_WITH_CUDA
  if (pass.lam.is_cuda()) return gate_pass_cuda(pass);
#endif
  TORCH_CHECK(pass.lam.is_cpu(), "contres: no fused kernel for device ", pass.lam.device().str(), " in this build");
  return gate_pass_cpu(pass);
}

void run(const TvForwardPass& pass) {
  RECORD_FUNCTION("contres::tv_forward_pass", std::vector<c10::IValue>());
#ifdef CONTRES_WITH_CUDA
  if (pass.z.is_cuda()) return tv_forward_pass_cuda(pass);
#endif
  TORCH_CHECK(pass.z.is_cpu(), "contres: no fused kernel for device ", pass.z.device().str(), " in this build");
  tv_forward_pass_cpu(pass);
}

void run(const TvGatePass& pass) {
  RECORD_FUNCTION("contres::tv_gate_pass", std::vector<c10::IValue>());
#ifdef CONTRES_WITH_CUDA
  if (pass.lam.is_cuda()) return tv_gate_pass_cuda(pass);
#endif
  TORCH_CHECK(pass.lam.is_cpu(), "contres: no fused kernel for device ", pass.lam.device().str(), " in this build");
  tv_gate_pass_cpu(pass);
}

// A Pre aux entry is (B, H, W, C) contiguous: the same memory as a channels_last (B, C, H, W) state.
at::Tensor as_state(const at::Tensor& t) { return t.defined() ? t.permute({0, 3, 1, 2}) : t; }

void activation_out(const at::Tensor& a, const at::Tensor& z, Act act) {
  at::Tensor out = a;
  switch (act) {
    case Act::Identity: if (!a.is_same(z)) out.copy_(z); return;
    case Act::Relu: at::clamp_min_out(out, z, 0); return;
    case Act::LeakyRelu: at::leaky_relu_out(out, z, kLeakySlope); return;
    case Act::Tanh: at::tanh_out(out, z); return;
    case Act::Sigmoid: at::sigmoid_out(out, z); return;
    case Act::Softplus: break;  // the chains' passes run it
  }
  TORCH_CHECK(false, "contres: internal error: activation code ", static_cast<int64_t>(act));
}

}  // namespace

at::Tensor empty_state(const Problem& p) {
  return at::empty({p.B, p.C, p.H, p.W}, p.opts.memory_format(kLayout));
}

at::Tensor empty_conv_state(const Problem& p) {
  return at::empty({p.B, p.C, p.H, p.W}, p.conv_opts.memory_format(kLayout));
}

at::Tensor empty_input(const Problem& p) { return p.low_input() ? empty_conv_state(p) : empty_state(p); }

Kept kept_entry(const std::vector<at::Tensor>& aux, int64_t e) {
  Kept k;
  for (const at::Tensor& t : aux) k.slots.push_back(t[e]);
  return k;
}

void Stages::evaluate(const at::Tensor& U, const Weights& w, int64_t row, const Combination& comb, const Kept& kept) {
  if (p_.plan.layer_passes) return forward(U, w.K(row), w.b(row), comb, kept[0]);
  if (!comb.any() && !kept.any()) return;  // a recomputation that wants nothing of this evaluation
  chain_forward(U, w.row(row), p_.stage_time(row), comb, kept);
}

at::Tensor Stages::adjoint(const Upstream& up, const at::Tensor& U, const Weights& w, int64_t row, const Kept& kept,
                           const Grads::Slot& slot, bool want_mu) {
  if (p_.plan.layer_passes)
    return adjoint(up, U, w.K(row), kept[0], slot.dK(), slot.db(), slot.accumulate, want_mu);
  return chain_adjoint(up, U, w.row(row), p_.stage_time(row), kept, slot);
}

bool Stages::own(const at::Tensor& x, const at::Tensor& K) const { return p_.own_conv && cpu::own_conv_supports(x, K); }

at::Tensor Stages::conv(const at::Tensor& u, const at::Tensor& K, const at::Tensor& b) const {
  if (own(u, K)) return cpu::own_conv2d(u, K, b);
  const std::optional<at::Tensor> bias = b.defined() ? std::optional<at::Tensor>(b) : std::nullopt;
  const int64_t pad = K.size(-1) / 2;
  return at::conv2d(u, K, bias, {1, 1}, {pad, pad}).contiguous(kLayout);
}

at::Tensor Stages::conv_transpose(const at::Tensor& g, const at::Tensor& K) const {
  if (own(g, K.transpose(0, 1))) return cpu::own_conv_transpose2d(g, K);  // a convolution of g with K (Co -> C)
  const int64_t pad = K.size(-1) / 2;
  return at::conv_transpose2d(g, K, {}, {1, 1}, {pad, pad}).contiguous(kLayout);
}

at::Tensor Stages::conv_weight_grad(const at::Tensor& g, const at::Tensor& input, const at::Tensor& K) const {
  if (own(input, K)) return cpu::own_conv_weight_grad(g, input, K);
  const int64_t pad = K.size(-1) / 2;
  return std::get<1>(at::convolution_backward(g, input, K, std::nullopt, {1, 1}, {pad, pad}, {1, 1}, false, {0, 0}, 1,
                                              {false, true, false}));
}

std::tuple<at::Tensor, at::Tensor> Stages::conv_backward(const at::Tensor& g, const at::Tensor& input,
                                                         const at::Tensor& K, bool want_input) const {
  if (own(input, K))
    return {want_input ? cpu::own_conv_transpose2d(g, K) : at::Tensor(), cpu::own_conv_weight_grad(g, input, K)};
  const int64_t pad = K.size(-1) / 2;
  auto grads = at::convolution_backward(g, input, K, std::nullopt, {1, 1}, {pad, pad}, {1, 1}, false, {0, 0}, 1,
                                        {want_input, true, false});
  at::Tensor d_input = std::get<0>(grads);
  if (d_input.defined()) d_input = d_input.contiguous(kLayout);
  return {d_input, std::get<1>(grads)};
}

void Stages::write_grad(const at::Tensor& target, const at::Tensor& value, bool accumulate) const {
  at::Tensor t = target;
  if (accumulate) t.add_(value);
  else t.copy_(value);
}

void Stages::forward(const at::Tensor& U, const at::Tensor& K, const at::Tensor& b, const Combination& comb,
                     const at::Tensor& aux_out) {
  const Config& cfg = p_.cfg;
  if (!comb.any() && !aux_out.defined()) return;  // a recomputation that wants nothing of this evaluation
#ifdef CONTRES_WITH_CUDNN_FUSION
  if (p_.fused_conv && cudnn_euler_forward(p_, U, K, b, comb, aux_out)) return;
#endif
  const at::Tensor z = conv(U, K, b);
  if (cfg.layer == Layer::Single) {
    if (cfg.norm == Norm::Tv) {
      if (!comb.any()) {  // the Pre aux is z itself
        as_state(aux_out).copy_(z);
        return;
      }
      TvForwardPass pass{z, p_.C, cfg.act, comb, {}, as_state(aux_out)};
      return run(pass);
    }
    ForwardPass pass{z, cfg.act, aux_out.defined() ? cfg.aux() : Aux::None, comb, aux_out};
    return run(pass);
  }
  // double_sym: a = act(z) (after the tv normalisation), then f = -convT(a, K).
  at::Tensor a = z;
  if (cfg.norm == Norm::Tv) {
    TvForwardPass pass;
    pass.z = z, pass.channels = p_.C, pass.act = cfg.act, pass.a_out = z, pass.z_keep = as_state(aux_out);
    run(pass);
  } else {
    if (aux_out.defined()) a = aux_out;  // the Value aux is a itself
    if (z.is_cpu()) activation_pass_cpu(z, cfg.act, a);
    else activation_out(a, z, cfg.act);
  }
  if (!comb.any()) return;
  const at::Tensor y = conv_transpose(a, K);
  if (comb.out.defined() && !comb.out_low.defined() && !comb.x1.defined() && !comb.out2.defined() &&
      comb.c0 == 1) {  // Euler's update
    at::Tensor out = comb.out;
    at::add_out(out, comb.x0, y, -comb.alpha);
    return;
  }
  Combination negated = comb;  // f = -y
  negated.alpha = -comb.alpha, negated.beta = -comb.beta;
  ForwardPass pass{y.contiguous(kLayout), Act::Identity, Aux::None, negated, {}};
  run(pass);
}

void Stages::gate(const Upstream& up, const at::Tensor& aux, const at::Tensor& z_for_tv, const at::Tensor& g,
                  const at::Tensor& db, bool accumulate, const at::Tensor& a_out) {
  const Config& cfg = p_.cfg;
  bool wrote_bias = false;
  at::Tensor bias_target = accumulate ? at::empty_like(db) : db;
  if (z_for_tv.defined()) {
    TvGatePass pass{up.lam, up.mu, up.c_mu, z_for_tv, p_.C, cfg.act, up.scale, g, up.sum_in, up.sum_out, a_out};
    run(pass);
  } else {
    const Aux kind = cfg.layer == Layer::Single ? cfg.aux() : Aux::Value;
    GatePass pass{up.lam, up.mu, up.c_mu, aux, cfg.act, kind, up.scale, g, up.sum_in, up.sum_out, bias_target, p_.C};
    wrote_bias = run(pass);
  }
  if (!wrote_bias) at::sum_out(bias_target, g, {0, 2, 3});
  if (accumulate) at::Tensor(db).add_(bias_target);
}

at::Tensor Stages::adjoint(const Upstream& up, const at::Tensor& U, const at::Tensor& K, const at::Tensor& aux,
                           const at::Tensor& dK, const at::Tensor& db, bool accumulate, bool want_mu) {
  const Config& cfg = p_.cfg;
  const bool tv = cfg.norm == Norm::Tv;
  if (cfg.layer == Layer::Single) {
    if (!g_buffer_.defined()) g_buffer_ = empty_conv_state(p_);
    gate(up, tv ? at::Tensor() : aux, tv ? as_state(aux) : at::Tensor(), g_buffer_, db, accumulate);
    auto [mu, dK_k] = conv_backward(g_buffer_, U, K, want_mu);
    write_grad(dK, dK_k, accumulate);
    return mu;
  }
  // double_sym: f = -convT(a, K), a = act(z): with v = dL/df / scale, q = conv(v, K), g = -scale act'(z) q.
  at::Tensor v = up.lam;
  if (p_.mixed()) {  // v is a convolution's input: formed (or cast) in the convolution dtype
    if (!v_buffer_.defined()) v_buffer_ = empty_conv_state(p_);
    v = v_buffer_;
    combine(v, up.lam, up.mu, up.c_mu, 1, up.sum_in, up.sum_out);
  } else if (up.mu.defined()) {
    if (up.sum_out.defined() && !up.sum_in.defined() && up.c_mu == 1) {
      v = up.sum_out;  // the running sum is v itself
      combine(v, up.lam, up.mu, 1);
    } else {
      if (!v_buffer_.defined()) v_buffer_ = empty_state(p_);
      v = v_buffer_;
      combine(v, up.lam, up.mu, up.c_mu, 1, up.sum_in, up.sum_out);
    }
  }
  const at::Tensor g = conv(v, K, at::Tensor());
  const at::Tensor a = tv ? at::empty_like(g) : aux;  // act(n), recomputed by the tv pass, or kept
  Upstream gated;
  gated.lam = g;
  gated.scale = -up.scale;
  gate(gated, tv ? at::Tensor() : aux, tv ? as_state(aux) : at::Tensor(), g, db, accumulate, tv ? a : at::Tensor());
  auto [mu, dK_conv] = conv_backward(g, U, K, want_mu);
  auto [unused, dK_convT] = conv_backward(a, v, K, false);
  if (accumulate) {
    at::Tensor(dK).add_(dK_conv).add_(dK_convT, -up.scale);
  } else if (dK.scalar_type() != dK_conv.scalar_type()) {  // mixed: the sum in dK's (the state's) dtype
    at::Tensor(dK).copy_(dK_conv).add_(dK_convT, -up.scale);
  } else {
    at::Tensor out = dK;
    at::add_out(out, dK_conv, dK_convT, -up.scale);
  }
  return mu;
}

void Stages::combine(const at::Tensor& out, const at::Tensor& lam, const at::Tensor& mu, double c_mu, double scale,
                     const at::Tensor& sum_in, const at::Tensor& sum_out) {
  GatePass pass{lam, mu, c_mu, {}, Act::Identity, Aux::None, scale, out, sum_in, sum_out, {}, p_.C};
  run(pass);
}

at::Tensor Stages::sum_target(const at::Tensor& mu) {
  if (mu.scalar_type() == p_.opts.dtype().toScalarType()) return mu;
  for (const at::Tensor& t : sum_buffers_)
    if (t.use_count() == 1 && t.storage().use_count() == 1) return t;  // only this list holds it
  sum_buffers_.push_back(empty_state(p_));
  return sum_buffers_.back();
}

at::Tensor Stages::add(const at::Tensor& lam, const at::Tensor& mu) {
  if (mu.scalar_type() == lam.scalar_type()) return at::Tensor(mu).add_(lam);
  return at::add(lam, mu);  // mixed: promotes to the state dtype
}

}  // namespace contres
