// Forward Euler: u_{k+1} = u_k + h f(u_k, t_k), and its adjoint
//   lam_k = lam_{k+1} + J_k^T (h lam_{k+1}),  dL/dK_k, dL/db_k from the evaluation at u_k.
#include <ATen/ATen.h>

#include "methods.h"
#ifdef CONTRES_WITH_CUDNN_FUSION
#include "../cuda/cudnn_euler.h"  // the adjoint on the fused cuDNN graphs
#endif

namespace contres {

void euler_sweep(const Problem& p, Stages& st, const Weights& w, const Tape& tape, int64_t begin, int64_t end) {
  at::Tensor u = tape.state(begin);
  for (int64_t k = begin; k < end; ++k) {
    const at::Tensor next = tape.state(k + 1);
    Combination comb;
    if (next.defined()) comb.out = next, comb.out_low = tape.low_copy(k + 1), comb.x0 = u, comb.alpha = p.h;
    st.evaluate(tape.conv_input(k), w, k, comb, tape.aux(k, 0));
    u = next;
  }
}

namespace {

class EulerAdjoint final : public Adjoint {
 public:
  EulerAdjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads, const at::Tensor& grad_out)
      : p_(p), st_(st), w_(w), grads_(grads), lam_(grad_out) {}

  void steps(const Tape& tape, int64_t begin, int64_t end) override {
    for (int64_t k = end - 1; k >= begin; --k) {
      // dL/du_{k+1} = lam + mu (mu: J^T of the step after), formed in mu's buffer by the same pass as the gate.
      Upstream up;
      up.lam = lam_, up.mu = mu_, up.scale = p_.h;
      if (mu_.defined()) up.sum_out = st_.sum_target(mu_);
      at::Tensor mu = adjoint_at(st_, up, tape.conv_input(k), w_, grads_, k, tape.aux(k, 0));
      if (mu_.defined()) lam_ = up.sum_out;
      mu_ = mu;
    }
  }

  at::Tensor finish() override { return st_.add(lam_, mu_); }

 private:
  const Problem& p_;
  Stages& st_;
  const Weights& w_;
  Grads& grads_;
  at::Tensor lam_, mu_;
};

}  // namespace

std::unique_ptr<Adjoint> make_euler_adjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads,
                                            const at::Tensor& grad_out) {
#ifdef CONTRES_WITH_CUDNN_FUSION
  if (auto fused = make_cudnn_euler_adjoint(p, st, w, grads, grad_out)) return fused;
#endif
  return std::make_unique<EulerAdjoint>(p, st, w, grads, grad_out);
}

}  // namespace contres
