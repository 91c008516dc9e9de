// Classic Runge-Kutta: k1 = f(u_k, t_k), k2 = f(U2, t_k + h/2) with U2 = u_k + h/2 k1, k3 = f(U3, t_k + h/2)
// with U3 = u_k + h/2 k2, k4 = f(U4, t_k + h) with U4 = u_k + h k3; u_{k+1} = u_k + h/6 (k1 + 2 k2 + 2 k3 + k4).
// Its exact adjoint, with lam = dL/du_{k+1} and mu_i = J_i^T w_i the adjoint of evaluation i under w_i = dL/dk_i:
//   w4 = h/6 lam,  w3 = h/3 lam + h mu4,  w2 = h/3 lam + h/2 mu3,  w1 = h/6 lam + h/2 mu2,
//   dL/du_k = lam + mu1 + mu2 + mu3 + mu4.
// The stage times' kernels are rows 2k, 2k+1 (stages 2 and 3) and 2k+2 of the weights.
#include <ATen/ATen.h>

#include "methods.h"

namespace contres {

void rk4_sweep(const Problem& p, Stages& st, const Weights& w, const Tape& tape, int64_t begin, int64_t end) {
  const double h = p.h;
  for (int64_t k = begin; k < end; ++k) {
    const at::Tensor u = tape.state(k), acc = tape.state(k + 1);  // acc becomes u_{k+1} (undefined: not wanted)
    const at::Tensor U2 = tape.stage(k, 1), U3 = tape.stage(k, 2), U4 = tape.stage(k, 3);
    const int64_t t0 = 2 * k, half = 2 * k + 1, t1 = 2 * k + 2;
    // The stage inputs are evaluation inputs only: with low-precision inputs the pass writes them in that dtype alone.
    auto comb = [&](const at::Tensor& stage_input, double alpha, const at::Tensor& y0, double beta) {
      Combination c;
      if (stage_input.defined()) (p.low_input() ? c.out_low : c.out) = stage_input, c.x0 = u, c.alpha = alpha;
      if (acc.defined()) c.out2 = acc, c.y0 = y0, c.beta = beta;
      return c;
    };
    st.evaluate(tape.conv_input(k), w, t0, comb(U2, h / 2, u, h / 6), tape.aux(k, 0));
    st.evaluate(U2, w, half, comb(U3, h / 2, acc, h / 3), tape.aux(k, 1));
    st.evaluate(U3, w, half, comb(U4, h, acc, h / 3), tape.aux(k, 2));
    Combination last;  // u_{k+1} = acc + h/6 k4, with its copy for the next step's convolution
    if (acc.defined()) last.out = acc, last.x0 = acc, last.alpha = h / 6, last.out_low = tape.low_copy(k + 1);
    st.evaluate(U4, w, t1, last, tape.aux(k, 3));
  }
}

namespace {

class Rk4Adjoint final : public Adjoint {
 public:
  Rk4Adjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads, const at::Tensor& grad_out)
      : p_(p), st_(st), w_(w), grads_(grads), lam_(grad_out) {}

  void steps(const Tape& tape, int64_t begin, int64_t end) override {
    const double h = p_.h;
    for (int64_t k = end - 1; k >= begin; --k) {
      const int64_t t0 = 2 * k, half = 2 * k + 1, t1 = 2 * k + 2;
      auto adjoint = [&](const Upstream& up, const at::Tensor& U, int64_t row, int s) {
        return adjoint_at(st_, up, U, w_, grads_, row, tape.aux(k, s));
      };
      // lam = dL/du_{k+1} = lam + mu1 of the step after, formed in mu1's buffer by stage 4's pass.
      Upstream up4;
      up4.lam = lam_, up4.mu = mu_, up4.scale = h / 6;
      if (mu_.defined()) up4.sum_out = st_.sum_target(mu_);
      const at::Tensor mu4 = adjoint(up4, tape.stage(k, 3), t1, 3);
      if (mu_.defined()) {
        if (lam_owned_) spare_ = lam_;  // its content now lives in the sum's buffer
        lam_ = up4.sum_out, lam_owned_ = true;
      }
      at::Tensor acc = spare_.defined() ? spare_ : empty_state(p_);
      spare_ = at::Tensor();
      // w3 = h/3 (lam + 3 mu4), and the running sum acc = lam + mu4
      Upstream up3;
      up3.lam = lam_, up3.mu = mu4, up3.c_mu = 3, up3.scale = h / 3, up3.sum_out = acc;
      const at::Tensor mu3 = adjoint(up3, tape.stage(k, 2), half, 2);
      // w2 = h/3 (lam + 1.5 mu3); acc += mu3
      Upstream up2;
      up2.lam = lam_, up2.mu = mu3, up2.c_mu = 1.5, up2.scale = h / 3, up2.sum_in = acc, up2.sum_out = acc;
      const at::Tensor mu2 = adjoint(up2, tape.stage(k, 1), half, 1);
      // w1 = h/6 (lam + 3 mu2); acc += mu2
      Upstream up1;
      up1.lam = lam_, up1.mu = mu2, up1.c_mu = 3, up1.scale = h / 6, up1.sum_in = acc, up1.sum_out = acc;
      mu_ = adjoint(up1, tape.conv_input(k), t0, 0);
      // dL/du_k = acc + mu1, formed by the next step's stage 4 (or finish)
      if (lam_owned_) spare_ = lam_;
      lam_ = acc, lam_owned_ = true;
    }
  }

  at::Tensor finish() override { return st_.add(lam_, mu_); }

 private:
  const Problem& p_;
  Stages& st_;
  const Weights& w_;
  Grads& grads_;
  at::Tensor lam_, mu_;
  bool lam_owned_ = false;  // lam_ starts as the caller's grad_out, which is never written
  at::Tensor spare_;        // a state buffer of ours that nothing reads any more
};

}  // namespace

std::unique_ptr<Adjoint> make_rk4_adjoint(const Problem& p, Stages& st, const Weights& w, Grads& grads,
                                          const at::Tensor& grad_out) {
  return std::make_unique<Rk4Adjoint>(p, st, w, grads, grad_out);
}

}  // namespace contres
