// The kernels and biases each evaluation reads, and where their gradients go. The op's weight and bias hold either
// the kernels at the method's stage times row by row (interp "none"), or the controls theta_j, beta_j, which the op
// interpolates itself (interp "constant" / "linear", docs/math.md section 1): K_i = sum_j W[i, j] theta_j, with at most
// two nonzeros per row of W. Interpolating inside the op means the backward recomputes each row's kernel from the
// controls instead of keeping all of them (the autograd of the interpolation would save every row), and folds each
// row's gradient into the controls as it goes: dL/dtheta_j = sum_i W[i, j] dL/dK_i.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "../config.h"

namespace contres {

// Row i of W: (1 - a) on control j plus a on control j + 1 (a = 0: control j alone, the only entry).
struct RowMix {
  int64_t j = 0;
  double a = 0;
};

// The rows of W for n_steps steps of the method from n_controls controls (the identity for Interp::None, where
// the rows are the controls): reference.control_weights_at's rule, in the same integer arithmetic, one row at a
// time (nothing of size n_steps is formed). The op's input checks bound n_steps and n_controls by kMaxSteps, so
// the products below fit in 64 bits.
class Interpolation {
 public:
  static constexpr int64_t kMaxSteps = (int64_t(1) << 31) - 1;
  Interpolation(Interp interp, Method method, int64_t n_steps, int64_t n_controls);
  RowMix row(int64_t i) const;

 private:
  Interp interp_;
  int64_t n_controls_, q_, n_rows_;  // stage time i is t = (i / q) T
};

// The parameters at each row, from the controls: the op's weight and bias, then its other parameters (chain.h's
// order). Those a convolution reads (kernels, conv biases) are in the convolutions' dtype (mixed precision: the
// controls are cast once per call, and a row of two controls is mixed in their own dtype, then cast, as autocast
// would); the rest (shifts, norm scales) stay in the controls' dtype.
class Weights {
 public:
  Weights(std::vector<at::Tensor> params, const std::vector<bool>& conv_read, Interpolation rows,
          at::ScalarType conv_dtype);
  // Row `row` of parameter i: a view of a control where the row is one, else a new tensor (never reused, so a
  // caller may keep it).
  at::Tensor param(int64_t i, int64_t row) const;
  std::vector<at::Tensor> row(int64_t row) const;  // every parameter's
  at::Tensor K(int64_t row) const { return param(0, row); }
  at::Tensor b(int64_t row) const { return param(1, row); }
  const at::Tensor& control(int64_t i) const { return controls_[i]; }  // as given (their dtype is the gradients')
  int64_t count() const { return static_cast<int64_t>(controls_.size()); }
  const Interpolation& rows() const { return rows_; }

 private:
  struct Mixed {
    int64_t row = -1;
    std::vector<at::Tensor> values;
  };
  const Mixed& mixed(int64_t row) const;  // the last row of two controls, formed once (rk4 reads one twice)
  std::vector<at::Tensor> controls_;  // contiguous
  std::vector<at::Tensor> cast_;      // the same in the dtype they are read in (the same tensors when it is theirs)
  Interpolation rows_;
  mutable Mixed mixed_;
};

// dL/d(each parameter) of the op, filled row by row as the adjoint walks back.
class Grads {
 public:
  explicit Grads(const Weights& w);

  // Where row `row`'s gradients go, one per parameter, and whether to add to what is there (a Stages::adjoint's
  // targets and accumulate): the control's own gradient when the row is one control (added to once it has been
  // written), else scratch that commit() folds into the controls. may_accumulate = false asks for a slot written,
  // not added to (scratch then, where the control has been written already).
  struct Slot {
    std::vector<at::Tensor> d;
    bool accumulate = false;
    const at::Tensor& dK() const { return d[0]; }
    const at::Tensor& db() const { return d[1]; }
  };
  Slot slot(int64_t row, bool may_accumulate = true);
  void commit(int64_t row, const Slot& slot);  // after the slot is written
  // The gradients, once every row is committed (controls no row reads get zeros).
  std::vector<at::Tensor> finish();

 private:
  void fold(int64_t j, double c, const Slot& slot);
  const Weights& w_;
  std::vector<at::Tensor> grads_;
  std::vector<bool> written_;  // per control
  std::vector<at::Tensor> scratch_;
};

}  // namespace contres
