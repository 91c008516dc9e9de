#include "cudnn_euler.h"

#ifdef CONTRES_WITH_CUDNN_FUSION

#include <ATen/ATen.h>

#include <array>

#include "../kernels.h"
#include "cudnn_step/fused_step.h"

namespace contres {
namespace {

namespace cf = cudnn_fusion;

bool usable(const Problem& p) {
  return p.fused_conv && p.plan.layer_passes && p.cfg.norm == Norm::None && p.opts.device().is_cuda() &&
         cf::supports(p.opts.dtype().toScalarType(), p.C, 2 * p.pad + 1, p.cfg.act);
}

at::Tensor filter(const at::Tensor& K) { return K.contiguous(at::MemoryFormat::ChannelsLast); }

at::Tensor mask_bytes_like(const Problem& p) {
  return at::empty({p.B, p.C, p.H, p.W}, p.opts.dtype(at::kByte).memory_format(kLayout));
}

at::Tensor conv_transpose(const Problem& p, const at::Tensor& g, const at::Tensor& K) {
  return at::conv_transpose2d(g, K, {}, {1, 1}, {p.pad, p.pad});
}

// mu = dgrad(g, K) = convT(g, K), not formed yet: the graph of the next step's gate forms it with its own work.
struct Pending {
  at::Tensor g, K;
};

class CudnnEulerAdjoint final : public Adjoint {
 public:
  CudnnEulerAdjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads, const at::Tensor& grad_out)
      : p_(p), st_(st), w_(w), grads_(grads), lam_(grad_out) {}

  // lam becomes a buffer of ours at the first step with a pending mu; from then on lam_out is lam, in place.
  void steps(const Tape& tape, int64_t begin, int64_t end) override {
    for (int64_t k = end - 1; k >= begin; --k) {
      at::Tensor lam_out = lam_;
      if (pending_.g.defined() && !lam_owned_) lam_out = empty_state(p_), lam_owned_ = true;
      const Grads::Slot slot = grads_.slot(k, false);  // the step writes its gradients
      pending_ = step(lam_, lam_out, tape.conv_input(k), w_.K(k), tape.aux(k, 0)[0], slot.dK(), slot.db());
      grads_.commit(k, slot);
      lam_ = lam_out;
    }
  }

  // lam + mu(pending): dL/dx.
  at::Tensor finish() override {
    TORCH_CHECK(pending_.g.defined(), "contres: internal error: the fused Euler adjoint ran no step");
    const at::Tensor out = empty_state(p_);
    if (!cf::run_dgrad_add(pending_.g, pending_.K, lam_, out)) {
      at::Tensor o = out;
      at::add_out(o, lam_, conv_transpose(p_, pending_.g, pending_.K));
    }
    return out;
  }

 private:
  // One step back: lam_out = lam + mu(pending_) (or lam itself when nothing is pending), g of step k from it and
  // the step's aux, dL/dK_k and dL/db_k; returns the step's pending mu. lam_out may alias lam.
  Pending step(const at::Tensor& lam, const at::Tensor& lam_out, const at::Tensor& U, const at::Tensor& K,
               const at::Tensor& aux, const at::Tensor& dK, const at::Tensor& db) {
    const Config& cfg = p_.cfg;
    const at::Tensor Kc = filter(K);
    at::Tensor& g = g_[turn_];  // not the pending g, which this step still reads
    turn_ ^= 1;
    if (!g.defined()) g = empty_state(p_);
    const at::Tensor bias32 = at::empty({p_.C}, p_.opts.dtype(at::kFloat));
    bool bias_in_bias32 = false, bias_written = false;

    if (cfg.layer == Layer::Single) {
      const Aux kind = cfg.aux();
      at::Tensor gate = kind == Aux::Value ? aux : at::Tensor();
      if (kind == Aux::Mask) {
        gate = mask_bytes_like(p_);
        unpack_mask_cuda(aux, gate);
      }
      bool fused = false;
      if (pending_.g.defined()) {
        fused = bias_in_bias32 =
            cf::run_dgrad_gate(pending_.g, pending_.K, lam, gate, cfg.act, kind, p_.h, lam_out, g, bias32);
        if (!fused)
          fused = cf::run_dgrad_gate(pending_.g, pending_.K, lam, gate, cfg.act, kind, p_.h, lam_out, g, {});
      }
      if (!fused) {  // the step-by-step gate, with mu = dgrad(pending) added into lam_out by the same pass
        Upstream up;
        up.lam = lam, up.scale = p_.h;
        if (pending_.g.defined()) up.mu = conv_transpose(p_, pending_.g, pending_.K), up.sum_out = lam_out;
        st_.gate(up, aux, at::Tensor(), g, db, false);
        bias_written = true;
      }
      at::Tensor(dK).copy_(std::get<1>(st_.conv_backward(g, U, K, false)));
    } else {
      // double_sym: v = lam + mu(pending) = dL/du_{k+1}; g = -h act'(z) conv(v, K); the weight gradient also has
      // -h wgrad(v, a).
      const at::Tensor& v = lam_out;
      if (pending_.g.defined() && !cf::run_dgrad_add(pending_.g, pending_.K, lam, v))
        st_.combine(v, lam, conv_transpose(p_, pending_.g, pending_.K), 1);
      bool fused = bias_in_bias32 = cf::run_conv_gate(v, Kc, aux, cfg.act, Aux::Value, -p_.h, g, bias32);
      if (!fused) fused = cf::run_conv_gate(v, Kc, aux, cfg.act, Aux::Value, -p_.h, g, {});
      if (!fused) {
        g.copy_(st_.conv(v, K, at::Tensor()));
        Upstream up;
        up.lam = g, up.scale = -p_.h;
        st_.gate(up, aux, at::Tensor(), g, db, false);
        bias_written = true;
      }
      const at::Tensor dK_conv = std::get<1>(st_.conv_backward(g, U, K, false));
      const at::Tensor dK_convT = std::get<1>(st_.conv_backward(aux, v, K, false));
      at::Tensor out = dK;
      at::add_out(out, dK_conv, dK_convT, -p_.h);
    }
    at::Tensor bias = db;
    if (bias_in_bias32) bias.copy_(bias32);
    else if (!bias_written) at::sum_out(bias, g, {0, 2, 3});
    return {g, Kc};
  }

  const Problem& p_;
  Stages& st_;
  const Weights& w_;
  Grads& grads_;
  at::Tensor lam_;
  Pending pending_;
  bool lam_owned_ = false;         // lam_ starts as the caller's grad_out, which is never written
  std::array<at::Tensor, 2> g_;    // g of the steps, in turn (the pending one is read as the next is made)
  int turn_ = 0;
};

}  // namespace

bool cudnn_euler_forward(const Problem& p, const at::Tensor& U, const at::Tensor& K, const at::Tensor& b,
                         const Combination& comb, const at::Tensor& aux_out) {
  // Euler's update out = U + alpha f only (the other methods' combinations run step by step).
  if (!usable(p) || !comb.out.defined() || comb.x1.defined() || comb.out2.defined() || comb.c0 != 1 ||
      !comb.x0.is_same(U))
    return false;
  const at::Tensor Kc = filter(K);
  if (p.cfg.layer == Layer::Single) {
    const Aux kind = aux_out.defined() ? p.cfg.aux() : Aux::None;
    const at::Tensor gate = kind == Aux::Mask ? mask_bytes_like(p) : (kind == Aux::Value ? aux_out : at::Tensor());
    if (!cf::run_forward_single(U, Kc, b, comb.alpha, p.cfg.act, kind, comb.out, gate)) return false;
    if (kind == Aux::Mask) pack_mask_cuda(gate, aux_out);
    return true;
  }
  // double_sym: a = act(conv(U, K) + b) (its Value aux), then out = U - alpha convT(a, K).
  const at::Tensor a = aux_out.defined() ? aux_out : empty_state(p);
  if (!cf::run_conv_bias_act(U, Kc, b, p.cfg.act, a)) return false;
  if (!cf::run_dgrad_add(a, Kc, U, comb.out, -comb.alpha)) {
    at::Tensor out = comb.out;
    at::add_out(out, U, conv_transpose(p, a, K), -comb.alpha);
  }
  return true;
}

std::unique_ptr<Adjoint> make_cudnn_euler_adjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads,
                                                  const at::Tensor& grad_out) {
  if (!usable(p) || p.cfg.method != Method::Euler) return nullptr;
  return std::make_unique<CudnnEulerAdjoint>(p, st, w, grads, grad_out);
}

}  // namespace contres

#endif  // CONTRES_WITH_CUDNN_FUSION
