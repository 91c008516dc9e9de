// Leapfrog, the centred scheme of the second-order ODE u'' = f: u_{k+1} = 2 u_k - u_{k-1} + h^2 f(u_k, t_k) with
// u_{-1} = u_0, i.e. u_1 = u_0 + h^2 f(u_0) (first-order accurate overall from that start: docs/math.md 4.5).
// With a_k = dL/du_k (a_N = dL/du_N, a_{N+1} = 0) its exact adjoint is
//   a_k = c_k a_{k+1} - a_{k+2} + J_k^T (h^2 a_{k+1}),   c_k = 2 for k >= 1, c_0 = 1,
// and dL/dK_k, dL/db_k from the evaluation at u_k under h^2 a_{k+1}.
#include <ATen/ATen.h>

#include "methods.h"

namespace contres {

void leapfrog_sweep(const Problem& p, Stages& st, const Weights& w, const Tape& tape, int64_t begin, int64_t end,
                    const at::Tensor& u_before) {
  at::Tensor u_prev = u_before, u = tape.state(begin);
  const double h2 = p.h * p.h;
  for (int64_t k = begin; k < end; ++k) {
    const at::Tensor next = tape.state(k + 1);
    Combination comb;
    if (next.defined()) {
      comb.out = next, comb.out_low = tape.low_copy(k + 1), comb.x0 = u, comb.alpha = h2;
      if (k > 0) comb.c0 = 2, comb.x1 = u_prev, comb.c1 = -1;  // u_{-1} = u_0: the first step is u_0 + h^2 f
    }
    st.evaluate(tape.conv_input(k), w, k, comb, tape.aux(k, 0));
    u_prev = u;
    u = next;
  }
}

namespace {

class LeapfrogAdjoint final : public Adjoint {
 public:
  LeapfrogAdjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads, const at::Tensor& grad_out)
      : p_(p), st_(st), w_(w), grads_(grads), part_(grad_out) {}

  // State between steps: a_{k+1} = part + mu (mu: J^T of the evaluation at u_{k+1}, still to be added), and
  // a_{k+2}.
  void steps(const Tape& tape, int64_t begin, int64_t end) override {
    for (int64_t k = end - 1; k >= begin; --k) {
      Upstream up;
      up.lam = part_, up.mu = mu_, up.scale = p_.h * p_.h;
      if (mu_.defined()) up.sum_out = st_.sum_target(mu_);  // a_{k+1}, formed by the same pass as the gate
      at::Tensor mu = adjoint_at(st_, up, tape.conv_input(k), w_, grads_, k, tape.aux(k, 0));
      const at::Tensor a1 = mu_.defined() ? up.sum_out : part_;
      // part of a_k: c_k a_{k+1} - a_{k+2}, as c_k (a_{k+1} - a_{k+2} / c_k) (exact: c_k is 1 or 2)
      const double c = k > 0 ? 2.0 : 1.0;
      at::Tensor next_part = part_owned_ && !part_.is_same(a1) ? part_ : empty_state(p_);
      st_.combine(next_part, a1, a2_, -1.0 / c, c);
      a2_ = a1;
      part_ = next_part, part_owned_ = true;
      mu_ = mu;
    }
  }

  at::Tensor finish() override { return st_.add(part_, mu_); }

 private:
  const Problem& p_;
  Stages& st_;
  const Weights& w_;
  Grads& grads_;
  at::Tensor part_, mu_, a2_;
  bool part_owned_ = false;  // part_ starts as the caller's grad_out, which is never written
};

}  // namespace

std::unique_ptr<Adjoint> make_leapfrog_adjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads,
                                               const at::Tensor& grad_out) {
  return std::make_unique<LeapfrogAdjoint>(p, st, w, grads, grad_out);
}

}  // namespace contres
