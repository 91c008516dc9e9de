// The Stages building blocks on the fused cuDNN graphs (cudnn_step/fused_step.h): Euler's forward step as one
// graph (the single layer) or two (double_sym), and Euler's backward with the data gradient of each step formed in
// the graph of the next one's gate. Anything a graph cannot run falls back to ATen's convolutions and the
// elementwise passes, step by step, with the same results to rounding.
#ifdef CONTRES_WITH_CUDNN_FUSION

#include <ATen/ATen.h>

#include "../driver/stages.h"
#include "../kernels.h"
#include "cudnn_step/fused_step.h"

namespace contres {
namespace {

namespace cf = cudnn_fusion;

cf::GateInput gate_input(Aux kind) {
  switch (kind) {
    case Aux::None: return cf::GateInput::None;
    case Aux::Mask: return cf::GateInput::Mask;
    case Aux::Value: return cf::GateInput::Value;
    case Aux::Pre: break;
  }
  TORCH_CHECK(false, "contres: internal error: no fused gate reads aux kind ", name_of(kind));
}

bool usable(const Problem& p) {
  return p.fused_conv && p.cfg.norm == Norm::None && p.opts.device().is_cuda() &&
         cf::supports(p.opts.dtype().toScalarType(), p.C, 2 * p.pad + 1, p.cfg.act);
}

at::Tensor filter(const at::Tensor& K) { return K.contiguous(at::MemoryFormat::ChannelsLast); }

at::Tensor mask_bytes_like(const Problem& p) {
  return at::empty({p.B, p.C, p.H, p.W}, p.opts.dtype(at::kByte).memory_format(kLayout));
}

}  // namespace

bool Stages::fused_forward(const at::Tensor& U, const at::Tensor& K, const at::Tensor& b, const Combination& comb,
                           const at::Tensor& aux_out) {
  // Euler's update out = U + alpha f only (the other methods' combinations run step by step).
  if (!usable(p_) || !comb.out.defined() || comb.x1.defined() || comb.out2.defined() || comb.c0 != 1 ||
      !comb.x0.is_same(U))
    return false;
  const at::Tensor Kc = filter(K);
  if (p_.cfg.layer == Layer::Single) {
    const Aux kind = aux_out.defined() ? p_.cfg.aux() : Aux::None;
    const at::Tensor gate = kind == Aux::Mask ? mask_bytes_like(p_) : (kind == Aux::Value ? aux_out : at::Tensor());
    if (!cf::run_forward_single(U, Kc, b, comb.alpha, p_.cfg.act, gate_input(kind), comb.out, gate)) return false;
    if (kind == Aux::Mask) pack_mask_cuda(gate, aux_out);
    return true;
  }
  // double_sym: a = act(conv(U, K) + b) (its Value aux), then out = U - alpha convT(a, K).
  const at::Tensor a = aux_out.defined() ? aux_out : empty_state(p_);
  if (!cf::run_conv_bias_act(U, Kc, b, p_.cfg.act, a)) return false;
  if (!cf::run_dgrad_add(a, Kc, U, comb.out, -comb.alpha)) {
    at::Tensor out = comb.out;
    at::add_out(out, U, at::conv_transpose2d(a, K, {}, {1, 1}, {p_.pad, p_.pad}), -comb.alpha);
  }
  return true;
}

bool Stages::fused_euler_adjoint() const { return usable(p_) && p_.cfg.method == Method::Euler; }

Stages::Pending Stages::fused_adjoint_step(const at::Tensor& lam, const Pending& pending, const at::Tensor& lam_out,
                                           const at::Tensor& U, const at::Tensor& K, const at::Tensor& aux,
                                           const at::Tensor& dK, const at::Tensor& db) {
  const Config& cfg = p_.cfg;
  const at::Tensor Kc = filter(K);
  at::Tensor& g = fused_g_[fused_turn_];  // not the pending g, which this step still reads
  fused_turn_ ^= 1;
  if (!g.defined()) g = empty_state(p_);
  const at::Tensor bias32 = at::empty({p_.C}, p_.opts.dtype(at::kFloat));
  bool bias_in_bias32 = false, bias_written = false;
  auto dgrad = [&](const Pending& q) { return at::conv_transpose2d(q.g, q.K, {}, {1, 1}, {p_.pad, p_.pad}); };

  if (cfg.layer == Layer::Single) {
    const Aux kind = cfg.aux();
    at::Tensor gate = kind == Aux::Value ? aux : at::Tensor();
    if (kind == Aux::Mask) {
      gate = mask_bytes_like(p_);
      unpack_mask_cuda(aux, gate);
    }
    bool fused = false;
    if (pending.g.defined()) {
      fused = bias_in_bias32 = cf::run_dgrad_gate(pending.g, pending.K, lam, gate, cfg.act, gate_input(kind), p_.h,
                                                  lam_out, g, bias32);
      if (!fused) fused = cf::run_dgrad_gate(pending.g, pending.K, lam, gate, cfg.act, gate_input(kind), p_.h, lam_out,
                                             g, at::Tensor());
    }
    if (!fused) {  // the step-by-step gate, with mu = dgrad(pending) added into lam_out by the same pass
      Upstream up;
      up.lam = lam, up.scale = p_.h;
      if (pending.g.defined()) up.mu = dgrad(pending), up.sum_out = lam_out;
      this->gate(up, aux, at::Tensor(), g, db, false);
      bias_written = true;
    }
    write_grad(dK, std::get<1>(conv_backward(g, U, K, false)), false);
  } else {
    // double_sym: v = lam + mu(pending) = dL/du_{k+1}; g = -h act'(z) conv(v, K); the weight gradient also has
    // -h wgrad(v, a).
    const at::Tensor& v = lam_out;
    if (pending.g.defined() && !cf::run_dgrad_add(pending.g, pending.K, lam, v)) combine(v, lam, dgrad(pending), 1);
    bool fused = bias_in_bias32 = cf::run_conv_gate(v, Kc, aux, cfg.act, cf::GateInput::Value, -p_.h, g, bias32);
    if (!fused) fused = cf::run_conv_gate(v, Kc, aux, cfg.act, cf::GateInput::Value, -p_.h, g, at::Tensor());
    if (!fused) {
      g.copy_(conv(v, K, at::Tensor()));
      Upstream up;
      up.lam = g, up.scale = -p_.h;
      this->gate(up, aux, at::Tensor(), g, db, false);
      bias_written = true;
    }
    auto [unused, dK_conv] = conv_backward(g, U, K, false);
    auto [unused2, dK_convT] = conv_backward(aux, v, K, false);
    at::Tensor out = dK;
    at::add_out(out, dK_conv, dK_convT, -p_.h);
  }
  if (bias_in_bias32) at::Tensor(db).copy_(bias32);
  else if (!bias_written) at::sum_out(const_cast<at::Tensor&>(db), g, {0, 2, 3});
  return {g, Kc};
}

at::Tensor Stages::fused_finish(const at::Tensor& lam, const Pending& pending) {
  const at::Tensor out = empty_state(p_);
  if (!cf::run_dgrad_add(pending.g, pending.K, lam, out))
    at::add_out(const_cast<at::Tensor&>(out), lam, at::conv_transpose2d(pending.g, pending.K, {}, {1, 1},
                                                                        {p_.pad, p_.pad}));
  return out;
}

}  // namespace contres

#endif  // CONTRES_WITH_CUDNN_FUSION
